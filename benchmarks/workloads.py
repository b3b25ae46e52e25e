"""The measured work of the speed benchmarks: the library's own training step and samplers.

A workload is a preset (``flags/presets/NAME.cfg``) at a precision and batch size. Training is
``TrainStep.make_train_loop`` (the training loop's compiled steps: objective, gradient, Adam,
EMA, NaN guard) on the real input pipeline over random uint8 images; sampling is
``api.generate`` on an in-memory run. Both are what ``run_train.py`` and ``run_sample.py``
run. This module imports whichever ``tf_score`` is first on ``sys.path``, so the same
workloads time another checkout of the library (``run_bench.py --baseline``).
"""

from __future__ import annotations

import os

import numpy as np

#: name -> (preset, {flag: value} overrides): the networks issue 16 measures
MODELS = {
    # the NCSN paper's MNIST model: CondRefineNetDilated, ngf 64, 7.64M parameters
    "refinenet": ("mnist_ncsn", {}),
    # the CPU preset: conditional ResNet, ngf 16 (195,841 parameters)
    "resnet_cpu": ("mnist_ncsn_cpu", {}),
    # the continuous-noise CPU model: EDM-preconditioned U-Net denoiser, ngf 16
    "edm_cpu": ("mnist_edm_cpu", {}),
    # the recommended MNIST model: the EDM U-Net of ngf 32, channels 32/64/96 (1,304,609
    # parameters), whose PyTorch twin is torch_edm.py
    "edm_avx2_90": ("mnist_edm_avx2_90", {}),
}


def preset_config(repo: str, model: str, **overrides):
    """The ``ExperimentConfig`` of ``model``'s preset with flag ``overrides``, parsed by the
    same absl flags as ``run_train.py`` (of the checkout at ``repo``)."""
    from absl import flags

    import tf_score.cli.definitions as F

    preset, fixed = MODELS[model]
    values = {**fixed, **overrides}
    argv = [
        "bench",
        f"--flagfile={os.path.join(repo, 'flags', 'presets', preset + '.cfg')}",
        "--workdir=/nonexistent",
        *(f"--{k}={v}" for k, v in values.items()),
    ]
    flags.FLAGS(argv)
    return F.experiment_config()


def _images(n: int = 512, shape=(28, 28, 1), seed: int = 0):
    import tensorflow as tf

    arr = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    return tf.data.Dataset.from_tensor_slices(arr), arr


def build(repo: str, model: str, precision: str, batch_size: int, jit: bool = False):
    """(config, TrainStep, compiled train loop) of a workload, ready to time."""
    import keras
    import tensorflow as tf

    from tf_score.families import score_model
    from tf_score.training.step import TrainStep

    cfg = preset_config(
        repo, model, precision=precision, batch_size=batch_size, jit=jit, ema_warmup=True
    )
    keras.mixed_precision.set_global_policy(cfg.network.precision)
    images, arr = _images(max(512, 2 * batch_size))
    mean = tuple(float(m) for m in (arr.mean(axis=(0, 1, 2)) + 0.5) / 256.0)
    cfg = cfg.replace(data={"data_shape": (28, 28, 1), "data_mean": mean})
    bundle = score_model.image_bundle(cfg, images, (28, 28, 1))
    step = TrainStep(bundle, cfg.train, seed=cfg.seed)
    strategy = tf.distribute.get_strategy()

    def input_fn(ctx):
        return bundle.dataset_fn(batch_size, ctx, 0)

    iterator = iter(strategy.distribute_datasets_from_function(input_fn))
    return cfg, step, step.make_train_loop(iterator)


def sampling_run(cfg, step):
    """An in-memory ``api.Run`` of the workload's EMA network (what ``api.load`` returns)."""
    from tf_score import api

    return api.Run(workdir="", config=cfg, models=dict(step.ema_models), step=0)


def sampler_options(model: str) -> dict:
    """Sampler settings of the timed sampling call: few evaluations per chain, so that large
    batches stay affordable; the cost of one evaluation is what is measured."""
    if model == "refinenet":
        return {"sampler": "langevin", "langevin_steps": 2}
    if model == "resnet_cpu":
        return {"sampler": "annealed_langevin", "n_steps_each": 1}
    return {"sampler": "heun"}  # the EDM preset's own: Heun on 10 of its levels


def forward_flops(cfg, model) -> int:
    """Floating-point operations of one forward pass on one example (TF's graph profiler:
    2 x multiply-adds of convolutions and matmuls, plus elementwise work)."""
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    from tf_score.families import score_model

    shape = tuple(cfg.data.data_shape)
    if score_model.is_continuous(cfg):
        fn = tf.function(lambda x, s: model(x, s))
        spec = tf.TensorSpec([1], tf.float32)
    else:
        fn = tf.function(lambda x, i: model(x, i))
        spec = tf.TensorSpec([1], tf.int32)
    graph = fn.get_concrete_function(tf.TensorSpec([1, *shape], tf.float32), spec).graph
    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return int(model_analyzer.profile(graph=graph, options=opts).total_float_ops)
