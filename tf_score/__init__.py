"""tf_score: score-based generative modelling in TensorFlow 2 / Keras 3.

Modules:
  sigmas    noise schedules
  losses    score-matching objectives (pure functions, per-example losses)
  samplers  Langevin-type samplers (tf.function-compiled loops)
  networks  Keras score networks
  data      toy distributions (TFP) and input pipelines
  metrics   sample-quality metrics
  plotting  PNG figures
  train     the one training loop
"""

__version__ = "0.1.0"
