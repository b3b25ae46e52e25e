"""A network plugin as a user writes one: a Keras denoiser and its ``NetworkSpec``, registered
when the module is imported (``run_train.py --plugins=THIS_FILE --network=test_concat_mlp``).

The raw network F(c_in y; c_noise) is an MLP on [c_in y, c_noise] (the noise level as one more
input, not an embedding): 2-D points, continuous in sigma, trained with loss=edm."""

import keras

from tf_score.networks import registry
from tf_score.networks.preconditioning import Denoiser


@keras.saving.register_keras_serializable(package="tf_score_test")
class ConcatMLP(Denoiser):
    """D(x; sigma) with F an MLP of [y_in, c_noise] (``hidden_units`` wide, silu)."""

    def __init__(self, data_shape=(2,), hidden_units=(32, 32), **kwargs):
        super().__init__(data_shape, **kwargs)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        for i, u in enumerate(self.hidden_units):  # attributes: a checkpoint sees them
            setattr(self, f"hidden_{i}", keras.layers.Dense(u, activation="silu"))
        self.out = keras.layers.Dense(self.data_shape[0])

    def raw(self, y_in, c_noise, training=False):
        h = keras.ops.concatenate([y_in, keras.ops.cast(c_noise[:, None], y_in.dtype)], axis=1)
        for i in range(len(self.hidden_units)):
            h = getattr(self, f"hidden_{i}")(h)
        return self.out(h)

    def get_config(self):
        return {**super().get_config(), "hidden_units": list(self.hidden_units)}


def build(cfg, shape):
    a, b = registry.data_scale(cfg)
    model = ConcatMLP(
        shape, hidden_units=cfg.network.hidden_units, sigma_data=cfg.noise.sigma_data,
        data_scale=a, data_shift=b, parameterization=cfg.noise.parameterization, name="score",
    )  # fmt: skip
    model.build()
    return model


SPEC = registry.register(
    registry.NetworkSpec("test_concat_mlp", build, "points", continuous=True), replace=True
)


class ListedMLP(ConcatMLP):
    """The same network with its hidden layers in a plain list, which ``tf.train.Checkpoint``
    does not see: ``networks.registry.build`` refuses it."""

    def __init__(self, data_shape=(2,), hidden_units=(32, 32), **kwargs):
        super().__init__(data_shape, hidden_units, **kwargs)
        self.listed = [keras.layers.Dense(u, activation="silu") for u in self.hidden_units]

    def raw(self, y_in, c_noise, training=False):
        h = keras.ops.concatenate([y_in, keras.ops.cast(c_noise[:, None], y_in.dtype)], axis=1)
        for layer in self.listed:
            h = layer(h)
        return self.out(h)


def build_listed(cfg, shape):
    model = ListedMLP(shape, hidden_units=cfg.network.hidden_units, name="score")
    model.build()
    return model


LISTED = registry.register(
    registry.NetworkSpec("test_listed_mlp", build_listed, "points", continuous=True),
    replace=True,
)
