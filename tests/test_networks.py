import keras
import numpy as np
import tensorflow as tf

from tf_score.networks import NoiseConditionalMLP
from tf_score.sigmas import geometric_sigmas

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
