"""The Keras face of the library: ``ScoreModel`` (``fit()``, ``generate()``, ``save()``,
``from_preset()``), ``training_data`` and the callbacks ``SampleGrid`` and ``QualityMetrics``."""

from tf_score.keras.callbacks import QualityMetrics, SampleGrid
from tf_score.keras.model import ScoreModel, training_data

__all__ = ["QualityMetrics", "SampleGrid", "ScoreModel", "training_data"]
