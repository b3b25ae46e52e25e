"""mixed_bfloat16 is numerically sound: the CPU preset's network (conditional ResNet, ngf 16,
channel_mults 1,2,2, annealed DSM on 10 levels, Adam 1e-3) trained in bfloat16 follows the
float32 run on the same batches and noise. The loss, the noise levels and the optimizer state
stay float32; only the network's convolutions and activations are bfloat16.

Tolerance, fixed before the run from bfloat16's 8-bit mantissa (relative rounding 2^-9 per
value, compounding over about 20 layers to a few 1e-3 of a score, and drifting as the weights
part): every step's loss within 5% of the float32 step's, and the mean over the last 10 of 40
steps within 3%; the run must also lower its loss by more than that tolerance, so that a
tracking failure cannot hide in a loss that does not move."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_score import config
from tf_score.families import score_model
from tf_score.training.step import TrainStep

STEPS, BATCH = 40, 16


def _losses(precision: str) -> tuple[list[float], TrainStep]:
    cfg = config.from_flat(
        dict(
            dataset="mnist",
            network="resnet",
            ngf=16,
            channel_mults=(1, 2, 2),
            num_res_blocks=2,
            sigma_max=1.0,
            sigma_min=0.01,
            num_levels=10,
            loss="anneal_dsm",
            anneal_power=2.0,
            learning_rate=1e-3,
            batch_size=BATCH,
            num_steps=STEPS,
            ema_rate=0.999,
            precision=precision,
            seed=3,
        )
    )
    # smooth random "images" (blurred uint8 noise): a loss that training can lower
    rng = np.random.default_rng(0)
    raw = rng.random((256, 28, 28, 1)).astype(np.float32)
    blurred = tf.nn.avg_pool2d(raw, 5, 1, "SAME").numpy()
    lo, hi = blurred.min(), blurred.max()
    arr = (255 * (blurred - lo) / (hi - lo)).astype(np.uint8)
    cfg = cfg.replace(data={"data_shape": (28, 28, 1), "data_mean": (float(arr.mean()) / 255,)})
    keras.mixed_precision.set_global_policy(precision)
    try:
        bundle = score_model.image_bundle(cfg, tf.data.Dataset.from_tensor_slices(arr), (28, 28, 1))
        step = TrainStep(bundle, cfg.train, seed=cfg.seed)
        strategy = tf.distribute.get_strategy()
        iterator = iter(
            strategy.distribute_datasets_from_function(lambda ctx: bundle.dataset_fn(BATCH, ctx, 0))
        )
        loop = step.make_train_loop(iterator)
        one = tf.constant(1, tf.int64)
        losses = [float(loop(one)["loss"][0]) for _ in range(STEPS)]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return losses, step


@pytest.fixture(scope="module")
def runs_by_precision():
    return {p: _losses(p) for p in ("float32", "mixed_bfloat16")}


def test_bfloat16_runs_in_bfloat16_and_keeps_float32_state(runs_by_precision):
    _, step = runs_by_precision["mixed_bfloat16"]
    net = step.models["score"]
    assert net.compute_dtype == "bfloat16"
    assert all(v.dtype == tf.float32 for v in net.trainable_variables)
    out = net(tf.zeros([2, 28, 28, 1]), tf.constant([0, 9]))
    assert out.dtype == tf.float32  # the score handed to losses and samplers
    _, fp32 = runs_by_precision["float32"]
    assert fp32.models["score"].compute_dtype == "float32"


def test_bfloat16_loss_tracks_the_float32_loss(runs_by_precision):
    fp32 = np.array(runs_by_precision["float32"][0])
    bf16 = np.array(runs_by_precision["mixed_bfloat16"][0])
    assert np.all(np.isfinite(bf16))
    rel = np.abs(bf16 - fp32) / fp32
    assert rel.max() < 0.05, rel
    last = abs(bf16[-10:].mean() - fp32[-10:].mean()) / fp32[-10:].mean()
    assert last < 0.03, (bf16[-10:].mean(), fp32[-10:].mean())
    # the loss moved by more than the tolerance (early steps vs late steps, float32 run)
    assert fp32[-10:].mean() < 0.9 * fp32[:5].mean(), (fp32[:5].mean(), fp32[-10:].mean())
