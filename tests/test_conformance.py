"""Every network through the same checks (the Sonnet conformance idea): config round trip,
a checkpoint that covers every variable, SavedModel export and reload, one training step
under a 2-replica MirroredStrategy equal to the one-device step, and one step under XLA.

Networks: the toy MLP, the conditional ResNet, NCSN's RefineNet, the two continuous-sigma
denoisers, the VAE's four networks and the digit classifier, each small enough to run in
seconds.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_score.families import vae
from tf_score.families.classifier import DigitClassifier
from tf_score.networks import (
    EDMMLP,
    ConditionalResNet,
    CondRefineNetDilated,
    EDMUNet,
    NoiseConditionalMLP,
)
from tf_score.noise import geometric_sigmas
from tf_score.training import distribute

SIGMAS = geometric_sigmas(1.0, 0.01, 4)
B = 4  # global batch: 2 per replica


def _levels():
    return tf.constant([0, 1, 2, 3], tf.int32)


def _images(shape=(16, 16, 1)):
    return tf.random.stateless_uniform([B, *shape], [1, 2])


VAE_CFG = dict(image_shape=(16, 16, 1), latent_dim=3, hidden_units=(16,), arch="mlp")


def _vae_net(cls):
    return lambda: cls(name=cls.__name__.lower(), **VAE_CFG)


#: name -> (factory of an unbuilt model, inputs of one call)
NETWORKS = {
    "mlp": (
        lambda: NoiseConditionalMLP(SIGMAS, data_dim=2, hidden_units=(16, 16)),
        lambda: (tf.random.stateless_normal([B, 2], [3, 4]), _levels()),
    ),
    "resnet": (
        lambda: ConditionalResNet((16, 16, 1), SIGMAS, ngf=4, channel_mults=(1, 2), num_blocks=1),
        lambda: (_images(), _levels()),
    ),
    "refinenet": (
        lambda: CondRefineNetDilated((16, 16, 1), SIGMAS, ngf=4),
        lambda: (_images(), _levels()),
    ),
    "edm_mlp": (
        lambda: EDMMLP((2,), hidden_units=(16, 16), sigma_data=4.0),
        lambda: (tf.random.stateless_normal([B, 2], [3, 4]), tf.constant([0.01, 0.1, 1.0, 10.0])),
    ),
    "edm_unet": (
        lambda: EDMUNet(
            (16, 16, 1), ngf=4, channel_mults=(1, 2), num_blocks=1, data_scale=2.0, data_shift=-1.0
        ),
        lambda: (_images(), tf.constant([0.01, 0.1, 1.0, 10.0])),
    ),
    "vae_implicit_encoder": (
        _vae_net(vae.ImplicitEncoder),
        lambda: (_images(), tf.random.stateless_normal([B, 3], [5, 6])),
    ),
    "vae_gaussian_encoder": (_vae_net(vae.GaussianEncoder), lambda: (_images(),)),
    "vae_decoder": (
        _vae_net(vae.BernoulliDecoder),
        lambda: (tf.random.stateless_normal([B, 3], [7, 8]),),
    ),
    "vae_latent_score": (
        _vae_net(vae.LatentScoreNetwork),
        lambda: (_images(), tf.random.stateless_normal([B, 3], [9, 1])),
    ),
    "classifier": (lambda: DigitClassifier((16, 16, 1), num_classes=10), lambda: (_images(),)),
}


def _built(name, seed=0):
    keras.utils.set_random_seed(seed)
    m = NETWORKS[name][0]()
    m.build()
    return m


def _flat(out):
    return [tf.cast(t, tf.float32).numpy() for t in tf.nest.flatten(out)]


def _loss(m, inputs, global_batch=B):
    """Mean over the global batch of the squared outputs (a per-example loss, summed)."""
    per_example = tf.add_n(
        [tf.reduce_sum(tf.reshape(tf.square(tf.cast(t, tf.float32)), [tf.shape(t)[0], -1]), 1)
         for t in tf.nest.flatten(m(*inputs))]
    )  # fmt: skip
    return tf.reduce_sum(per_example) / global_batch


def _differ(a, b) -> bool:
    return not all(np.array_equal(x, y) for x, y in zip(_flat(a), _flat(b), strict=True))


def _assert_same(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(_flat(a), _flat(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def _assert_close_to_scale(a, b, rel=1e-5):
    """Equal up to float32 reassociation: sums taken in another order (an all-reduce over
    replicas, XLA's fusions) differ by a few ulps of the largest quantities involved, so the
    absolute tolerance is ``rel`` times the largest magnitude over all the tensors (a
    gradient that is zero in exact arithmetic, e.g. of a bias before a GroupNorm, is
    round-off of that scale)."""
    xs, ys = _flat(a), _flat(b)
    scale = max(float(np.max(np.abs(y))) for y in ys)
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=rel * scale + 1e-7)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_config_round_trip_and_checkpoint_cover_every_variable(name, tmp_path):
    m, inputs = _built(name), NETWORKS[name][1]()
    clone = type(m).from_config(m.get_config())
    clone.build()
    assert clone.get_config() == m.get_config()
    assert [w.shape for w in clone.weights] == [w.shape for w in m.weights]
    # a checkpoint written from m and read into another instance restores every variable
    path = tf.train.Checkpoint(model=m).write(str(tmp_path / "ckpt"))
    other = _built(name, seed=1)
    assert _differ(m.weights, other.weights)
    status = tf.train.Checkpoint(model=other).read(path)
    status.assert_consumed()
    _assert_same(m.weights, other.weights, rtol=0, atol=0)
    _assert_same(m(*inputs), other(*inputs), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_saved_model_export_and_reload_give_the_same_outputs(name, tmp_path):
    m, inputs = _built(name), NETWORKS[name][1]()
    specs = [tf.TensorSpec([None, *t.shape[1:]], t.dtype, name=f"in{i}") for i, t in
             enumerate(inputs)]  # fmt: skip
    archive = keras.export.ExportArchive()
    archive.track(m)
    archive.add_endpoint("call", tf.function(lambda *a: m(*a), input_signature=specs))
    archive.write_out(str(tmp_path / "sm"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    _assert_close_to_scale(loaded.call(*inputs), m(*inputs))


def _sgd_step(m, inputs, strategy=None):
    """One SGD step (lr 0.1) of ``_loss`` on the global batch ``inputs``; returns the weights."""
    opt = keras.optimizers.SGD(0.1)
    if strategy is None:
        with tf.GradientTape() as tape:
            loss = _loss(m, inputs)
        opt.apply(tape.gradient(loss, m.trainable_variables), m.trainable_variables)
        return _flat(m.weights)
    with strategy.scope():
        opt.build(m.trainable_variables)
    dist = strategy.experimental_distribute_values_from_function(
        lambda ctx: tuple(
            t[ctx.replica_id_in_sync_group * 2 : ctx.replica_id_in_sync_group * 2 + 2]
            for t in inputs
        )
    )

    # eager: tracing the 2-replica step of the RefineNet took 100 s, the step itself < 1 s
    def step(batch):
        def replica(batch):
            with tf.GradientTape() as tape:
                loss = _loss(m, batch)
            grads = tape.gradient(loss, m.trainable_variables)
            opt.apply(grads, m.trainable_variables)  # Keras all-reduces (sums) them

        strategy.run(replica, args=(batch,))

    step(dist)
    return _flat(m.weights)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_one_training_step_under_a_2_replica_strategy_equals_one_device(name):
    assert len(tf.config.list_logical_devices("CPU")) == 2, "conftest configures 2 logical CPUs"
    inputs = NETWORKS[name][1]()
    one = _sgd_step(_built(name), inputs)
    # one MirroredStrategy per process and device set (a second one restarts the collective
    # keys, and its all-reduces fail): the library's cached one
    strategy = distribute.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    with strategy.scope():
        m = _built(name)
    two = _sgd_step(m, inputs, strategy)
    _assert_close_to_scale(two, one)
    assert _differ(one, _built(name).weights)  # the step changed the weights


@pytest.mark.parametrize("name", list(NETWORKS))
def test_one_step_under_xla_matches_tf_kernels(name):
    """The loss and gradients of one step compiled by XLA equal TensorFlow's kernels' (run
    eagerly: tracing the RefineNet's gradient into a graph as well took longer than XLA)."""
    m, inputs = _built(name), NETWORKS[name][1]()

    def loss_and_grads(*args):
        with tf.GradientTape() as tape:
            loss = _loss(m, args)
        return loss, tape.gradient(loss, m.trainable_variables)

    kernels = loss_and_grads(*inputs)
    xla = tf.function(loss_and_grads, jit_compile=True)(*inputs)
    np.testing.assert_allclose(xla[0].numpy(), kernels[0].numpy(), rtol=1e-4)
    dense = [[tf.convert_to_tensor(g) for g in grads] for grads in (xla[1], kernels[1])]
    _assert_close_to_scale(*dense)  # (gathers give IndexedSlices gradients: made dense)
