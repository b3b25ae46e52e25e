"""Score-entropy VAE: the surrogate's entropy gradient, the SSM-trained score, AIS, training."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import MNIST_DATA_DIR

from tf_score import config, data
from tf_score.config import TrainConfig
from tf_score.evaluation import likelihood
from tf_score.families import vae
from tf_score.training import loop
from tf_score.training.step import build_models


def _vae_config(shape, **kw):
    """A VAE experiment's config on images of ``shape`` (the VAE's former defaults: tanh MLP
    256-256, RMSprop)."""
    base = dict(model="vae", dataset="mnist", hidden_units=(256, 256), activation="tanh",
                optimizer="rmsprop")  # fmt: skip
    flat = {**base, **kw}
    return config.from_flat(flat).replace(data={"data_shape": tuple(shape)})


SHAPE = (2, 2, 1)  # a 4-pixel "image": the encoder tests need x, not its size


class GaussianAsImplicit(keras.Model):
    """An implicit encoder that is in fact Gaussian: h(x, eps) = W x + b + exp(log_sigma) eps."""

    def __init__(self, latent_dim, log_sigma):
        super().__init__()
        self.latent_dim = latent_dim
        self.mu = keras.layers.Dense(latent_dim)
        self.log_sigma = self.add_weight(
            shape=(latent_dim,), initializer=keras.initializers.Constant(log_sigma)
        )
        self.mu.build((None, int(np.prod(SHAPE))))

    def mean(self, x):
        return self.mu(tf.reshape(x, [tf.shape(x)[0], -1]))

    def call(self, x, eps):
        return self.mean(x) + tf.exp(self.log_sigma) * eps

    def sample(self, x, seed):
        eps = tf.random.stateless_normal([tf.shape(x)[0], self.latent_dim], seed=seed)
        return self(x, eps)


class ExactScore:
    """grad_z log q(z|x) = -(z - mu(x)) / sigma^2 of the Gaussian encoder."""

    def __init__(self, encoder):
        self.encoder = encoder

    def __call__(self, x, z):
        return -(z - self.encoder.mean(x)) / tf.exp(2.0 * self.encoder.log_sigma)


def _binary_images(n, seed):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(0, 2, (n, *SHAPE)).astype(np.float32))


def _cfg(**kw):
    return _vae_config(SHAPE, latent_dim=3, hidden_units=(32,), binarize=False, **kw)


def _grads(loss_fn, variables):
    with tf.GradientTape() as tape:
        loss = loss_fn()
    return [g.numpy() for g in tape.gradient(loss, variables)]


def test_surrogate_gradient_with_the_exact_score_is_the_analytic_entropy_gradient():
    """Same z in both: the surrogate's gradient minus (rec + prior) terms is -grad H = -1 per
    log sigma_k, and 0 for the mean's weights. Monte Carlo over 4 x 50,000 draws: the SE of
    each entry is about 0.003; tolerance 0.02."""
    keras.utils.set_random_seed(0)
    cfg = _cfg()
    enc = GaussianAsImplicit(3, [-1.0, 0.0, 0.5])
    dec = vae.BernoulliDecoder(**vae.network_kwargs(cfg))
    dec.build()
    models = {"encoder": enc, "decoder": dec, "score": ExactScore(enc)}
    x = tf.repeat(_binary_images(4, 0), 50_000, axis=0)
    seed = tf.constant([1, 2])
    variables = enc.trainable_variables

    def surrogate():
        return tf.reduce_mean(vae.implicit_autoencoder_loss(cfg, models, x, seed).loss)

    def analytic():  # the same reconstruction and prior terms, entropy in closed form
        out = vae.implicit_autoencoder_loss(cfg, models, x, seed)
        m = out.metrics
        entropy = tf.reduce_sum(enc.log_sigma)  # + const
        return tf.reduce_mean(m["reconstruction"] + m["prior_nll"]) - entropy

    g_sur, g_ana = _grads(surrogate, variables), _grads(analytic, variables)
    for a, b in zip(g_sur, g_ana, strict=True):
        np.testing.assert_allclose(a, b, atol=0.02)
    # and the entropy part alone is what the formula says
    g_ent = _grads(
        lambda: tf.reduce_mean(
            vae.entropy_surrogate(ExactScore(enc)(x, enc.sample(x, seed)), enc.sample(x, seed))
        ),
        [enc.log_sigma],
    )[0]
    np.testing.assert_allclose(g_ent, -np.ones(3), atol=0.02)


def test_score_net_trained_by_ssm_vr_gives_the_entropy_gradient():
    """s_psi trained by the library's SSM-VR objective on a fixed Gaussian encoder; its
    entropy gradient w.r.t. log sigma matches the analytic -1 per dimension within 0.1."""
    keras.utils.set_random_seed(0)
    cfg = _cfg()
    enc = GaussianAsImplicit(3, [-1.0, 0.0, 0.5])
    score = vae.LatentScoreNetwork(**{**vae.network_kwargs(cfg), "hidden_units": (64, 64)})
    score.build()
    models = {"encoder": enc, "score": score}
    opt = keras.optimizers.Adam(3e-3)
    xs = _binary_images(256, 1)

    @tf.function
    def step(i):
        x = tf.gather(xs, tf.random.stateless_uniform([128], [i, 0], 0, 256, tf.int32))
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(vae.entropy_score_loss(cfg, models, x, tf.stack([i, 1])).loss)
        opt.apply(tape.gradient(loss, score.trainable_variables), score.trainable_variables)
        return loss

    for i in range(2500):
        step(tf.constant(i))
    x = tf.repeat(xs[:16], 4000, axis=0)
    z_seed = tf.constant([7, 7])

    def entropy_term(score_fn):
        z = enc.sample(x, z_seed)
        return tf.reduce_mean(vae.entropy_surrogate(score_fn(x, z), z))

    g_learned = _grads(lambda: entropy_term(score), [enc.log_sigma])[0]
    g_exact = _grads(lambda: entropy_term(ExactScore(enc)), [enc.log_sigma])[0]
    np.testing.assert_allclose(g_exact, -np.ones(3), atol=0.03)
    np.testing.assert_allclose(g_learned, -np.ones(3), atol=0.1)


def test_ais_recovers_the_exact_log_likelihood_of_a_linear_gaussian_model():
    """p(z) = N(0, I_2), p(x|z) = N(W z + b, 0.3^2 I_5): log p(x) = log N(x; b, W W^T + 0.09 I).
    128 chains x 500 temperatures; each example's estimate within 0.1 nats, mean within 0.03."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 2)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    s = 0.3
    cov = w @ w.T + s**2 * np.eye(5)
    x = rng.multivariate_normal(b, cov, size=8).astype(np.float32)
    diff = x - b
    exact = -0.5 * (
        np.einsum("bi,ij,bj->b", diff, np.linalg.inv(cov), diff)
        + np.linalg.slogdet(cov)[1]
        + 5 * np.log(2 * np.pi)
    )

    def loglik(z, xx):
        mean = tf.matmul(z, w, transpose_b=True) + b
        return tf.reduce_sum(
            -0.5 * tf.square((xx - mean) / s) - np.log(s) - 0.5 * np.log(2 * np.pi), axis=-1
        )

    res = tf.function(
        lambda: likelihood.ais_log_likelihood(
            loglik, x, 2, tf.constant([0, 1]), ais_chains=128, ais_temperatures=500
        )
    )()
    est = res.log_likelihood.numpy()
    assert 0.4 < float(res.accept_rate) < 0.95
    np.testing.assert_allclose(est, exact, atol=0.1)
    assert abs(float(np.mean(est - exact))) < 0.03


def test_sigmoid_schedule_runs_from_zero_to_one():
    betas = likelihood.sigmoid_schedule(100)
    assert betas[0] == 0.0 and betas[-1] == pytest.approx(1.0)
    assert np.all(np.diff(betas) > 0)


@pytest.mark.parametrize(
    "cls", [vae.ImplicitEncoder, vae.GaussianEncoder, vae.BernoulliDecoder, vae.LatentScoreNetwork]
)
@pytest.mark.parametrize("arch, shape", [("mlp", (28, 28, 1)), ("conv", (32, 32, 3))])
def test_networks_serialise_and_checkpoint_every_variable(cls, arch, shape, tmp_path):
    m = cls(shape, 4, hidden_units=(16,), arch=arch, ngf=8, name="m")
    m.build()
    clone = cls.from_config(m.get_config())
    clone.build()
    assert clone.count_params() == m.count_params() > 0
    ckpt = tf.train.Checkpoint(m=m)
    path = ckpt.write(str(tmp_path / "ck"))
    names = {n for n, _ in tf.train.list_variables(path) if "OPTIMIZER" not in n}
    assert sum(1 for n in names if n.startswith("m/") and n.endswith("VARIABLE_VALUE")) == len(
        m.weights
    )


def test_conv_arch_rejects_sizes_not_divisible_by_8():
    with pytest.raises(ValueError, match="divisible by 8"):
        vae.ImplicitEncoder((28, 28, 1), 8, arch="conv")


@pytest.mark.parametrize("encoder", ["implicit", "gaussian"])
def test_short_real_mnist_training_lowers_the_loss(encoder, tmp_path):
    images, spec = data.load_tfds_images("mnist", "train", MNIST_DATA_DIR, download=False)
    images = images.take(2048)
    cfg = _vae_config(spec.image_shape, vae_encoder=encoder, latent_dim=8)
    bundle = vae.vae_bundle(cfg, images, seed=0)
    config = TrainConfig(
        num_steps=300,
        batch_size=64,
        log_every=50,
        checkpoint_every=300,
        steps_per_loop=50,
    )
    keras.utils.set_random_seed(0)
    initial, *_ = build_models(bundle, tf.distribute.get_strategy())
    x = next(iter(bundle.dataset_fn(256, tf.distribute.InputContext(), 0)))
    ae = bundle.objectives[-1]

    def rec(models):
        return float(
            tf.reduce_mean(ae.loss_fn(models, x, tf.constant([3, 3])).metrics["reconstruction"])
        )

    before = rec(initial)
    result = loop.train(bundle, config, str(tmp_path))
    after = rec(result.models)
    assert before > 500  # 784 log 2 = 543 nats for an untrained decoder
    assert after < 0.5 * before, (before, after)
    assert np.isfinite(result.loss)
    # TensorBoard: the objectives' losses and terms, latent histograms, image grids
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    expected = {
        "autoencoder/loss",
        "autoencoder/reconstruction",
        "vae/latent_z",
        "vae/reconstructions",
        "vae/prior_samples",
    }
    expected |= (
        {"score_net/loss", "autoencoder/prior_nll"} if encoder == "implicit" else {"autoencoder/kl"}
    )
    assert expected <= tags, expected - tags
