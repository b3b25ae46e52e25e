"""tf_score: score-based generative modelling in TensorFlow 2 / Keras 3.

Packages by layer (imports run one way, top to bottom; tests/test_layout.py checks it):
  api          train / load / generate / inpaint / sample / evaluate / export: one call each
  families     how a score model, a VAE and the classifier are built, trained, loaded and
               evaluated (Run, generate, outputs)
  sampling     the solver registry, the solvers, conditioning (inpainting)
  training     the one loop, the step, checkpoints, workdir lock, strategies, signals
  evaluation   metrics (mode weight, MMD, two-sample test, FID / KID), likelihood, figures
  export       SavedModel signatures with limits
  networks     Keras score networks, EDM preconditioning, the model contract
  losses       score-matching objectives (pure, per-example)
  config       ExperimentConfig, the one config type: plain data (no TensorFlow)
  noise        noise grids (numpy) and sigma draws (noise.draws)
  data         toy distributions (TFP) and input pipelines
  atomic       files written whole or not at all
"""

__version__ = "0.1.0"
