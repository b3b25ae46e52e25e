import keras
import numpy as np
import tensorflow as tf

from tf_score.networks import NoiseConditionalMLP
from tf_score.noise import geometric_sigmas

SIGMAS = geometric_sigmas(20.0, 1.0, 10)


def _model(**kw):
    m = NoiseConditionalMLP(SIGMAS, **kw)
    m.build()
    return m


def _inputs():
    x = tf.random.stateless_normal([16, 2], seed=[0, 1])
    levels = tf.range(16) % 10
    return x, levels


def test_shapes_and_parameter_count():
    m = _model()
    x, levels = _inputs()
    assert m(x, levels).shape == (16, 2)
    # 3->128 (+bias) and 128->128 (+bias), each with a 10x128 level scale; 128->2 output.
    expected = (3 * 128 + 128 + 10 * 128) + (128 * 128 + 128 + 10 * 128) + (128 * 2 + 2)
    assert m.count_params() == expected


def test_output_depends_on_the_level():
    m = _model()
    x = tf.ones([2, 2])
    a = m(x, tf.constant([0, 9])).numpy()
    assert not np.allclose(a[0], a[1])


def test_scale_by_sigma():
    m = _model(scale_by_sigma=True, log_sigma_input=False)
    ref = NoiseConditionalMLP.from_config({**m.get_config(), "scale_by_sigma": False})
    ref.build()
    ref.set_weights(m.get_weights())
    x, levels = _inputs()
    sig = tf.gather(SIGMAS, levels)[:, None]
    np.testing.assert_allclose(m(x, levels).numpy(), (ref(x, levels) / sig).numpy(), rtol=1e-5)


def test_config_and_keras_file_round_trip(tmp_path):
    m = _model(hidden_units=(32, 16), activation="elu")
    clone = NoiseConditionalMLP.from_config(m.get_config())
    clone.build()
    assert clone.count_params() == m.count_params()
    path = str(tmp_path / "m.keras")
    m.save(path)
    loaded = keras.saving.load_model(path)
    x, levels = _inputs()
    np.testing.assert_allclose(loaded(x, levels).numpy(), m(x, levels).numpy(), rtol=1e-6)


def test_checkpoint_round_trip_covers_every_variable(tmp_path):
    """tf.train.Checkpoint must see every weight (layers kept in lists would be missed)."""
    m, other = _model(), _model()
    x, levels = _inputs()
    assert not np.allclose(m(x, levels).numpy(), other(x, levels).numpy())
    path = tf.train.Checkpoint(model=m).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=other).restore(path).assert_consumed()
    np.testing.assert_array_equal(m(x, levels).numpy(), other(x, levels).numpy())
    saved = {name for name, _ in tf.train.list_variables(path) if "model/" in name}
    assert len(saved) == len(m.weights)


# --- the fused normalisations (issue 16) equal the formulas they replace --------------------


def _cin_reference(x, levels, scale, offset, eps=1e-5):
    """Conditional instance norm++ by its definition: two-pass moments, autodiff gradient."""
    mu, var = tf.nn.moments(x, axes=[1, 2], keepdims=True)
    m, v = tf.nn.moments(mu, axes=[3], keepdims=True)
    c = float(x.shape[-1])
    v = v * c / (c - 1.0)
    h = (x - mu) / tf.sqrt(var + eps)
    gamma, alpha = tf.split(tf.gather(scale, levels), 2, axis=-1)
    h = h + (mu - m) / tf.sqrt(v + eps) * alpha[:, None, None, :]
    return gamma[:, None, None, :] * h + tf.gather(offset, levels)[:, None, None, :]


def test_fused_instance_norm_plus_and_its_gradient_equal_the_definition():
    from tf_score.networks.layers import ConditionalInstanceNormPlus

    layer = ConditionalInstanceNormPlus(4)
    layer.build((3, 6, 6, 5))
    layer.offset.assign(tf.random.stateless_normal([4, 5], [0, 1]))
    # means far from zero relative to the spread: the one-pass variance must still hold
    x = 3.0 + 0.5 * tf.random.stateless_normal([3, 6, 6, 5], [0, 2])
    levels = tf.constant([0, 3, 1])
    w = tf.random.stateless_normal([3, 6, 6, 5], [0, 3])
    grads = []
    for fn in (
        lambda: layer(x, levels),
        lambda: _cin_reference(x, levels, layer.scale, layer.offset),
    ):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn()
            loss = tf.reduce_sum(w * y)
        grads.append((y, *tape.gradient(loss, [x, layer.scale, layer.offset])))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(
            tf.convert_to_tensor(a), tf.convert_to_tensor(b), atol=2e-5, rtol=1e-4
        )


def test_group_norm_equals_keras_group_normalization_and_reads_its_checkpoint(tmp_path):
    from tf_score.networks.denoisers import GroupNorm

    x = 1.5 + tf.random.stateless_normal([2, 4, 4, 8], [1, 2])
    old = keras.layers.GroupNormalization(4)
    old.build(x.shape)
    old.gamma.assign(tf.random.stateless_normal([8], [1, 3]))
    old.beta.assign(tf.random.stateless_normal([8], [1, 4]))
    path = tf.train.Checkpoint(layer=old).write(str(tmp_path / "ckpt"))
    new = GroupNorm(4)
    new.build(x.shape)
    tf.train.Checkpoint(layer=new).read(path).assert_existing_objects_matched()
    w = tf.random.stateless_normal(x.shape, [1, 5])
    outs = []
    for fn in (lambda: old(x), lambda: new(x)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn()
            loss = tf.reduce_sum(w * y)
        outs.append((y, tape.gradient(loss, x)))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    scale, shift = tf.fill([2, 1, 1, 8], 0.3), tf.fill([2, 1, 1, 8], -0.2)
    np.testing.assert_allclose(new(x, scale, shift), old(x) * 1.3 - 0.2, atol=2e-5, rtol=1e-4)


def test_dilated_conv_runs_the_dilation_in_the_kernel_and_equals_tf_nn_convolution():
    from tf_score.networks.layers import DilatedConv2D

    conv = DilatedConv2D(6, 3, padding="same", dilation_rate=2)
    x = tf.random.stateless_normal([2, 14, 14, 4], [2, 1])
    y = conv(x)
    ref = tf.nn.convolution(x, conv.kernel, padding="SAME", dilations=2) + conv.bias
    np.testing.assert_allclose(y, ref, atol=1e-5)
    ops = {op.type for op in tf.function(conv).get_concrete_function(x).graph.get_operations()}
    assert "SpaceToBatchND" not in ops and "Conv2D" in ops
