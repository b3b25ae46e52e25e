"""Score-entropy VAE (sliced score matching paper, sec. 5) and its Gaussian-encoder baseline.

The implicit encoder draws z = h_phi(x, eps), eps ~ N(0, I), so q(z|x) has no density to
evaluate. The ELBO's entropy gradient only needs the score of q:

    grad_phi H(q) = -E[ grad_z log q(z|x)^T grad_phi h_phi(x, eps) ],

and a score network s_psi(x, z) ~ grad_z log q(z|x), trained by sliced score matching on
fresh encoder samples, stands in for it. The autoencoder minimises the per-example surrogate

    -log p(x|z) - log p(z) + sum(stop_gradient(s_psi(x, z)) * z),

whose gradient is the negative ELBO's (the last term is -H up to a term whose expectation
has zero gradient). Training alternates one SSM-VR step of s_psi and one autoencoder step,
each with its own optimizer, in the project's training loop (two ``Objective``s).

The baseline is the same architecture with a Gaussian encoder and the analytic KL. Both are
evaluated by annealed importance sampling (``evaluation.likelihood.ais_log_likelihood``, HMC
from ``tfp.mcmc``),
and the Gaussian one also by the IWAE bound. Distributions come from TensorFlow Probability:
Bernoulli decoder ``tfd.Independent(tfd.Bernoulli(logits))``, prior ``MultivariateNormalDiag``.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tf_score import data, losses
from tf_score.config import ExperimentConfig
from tf_score.evaluation import plotting
from tf_score.evaluation.likelihood import tile_batch
from tf_score.export import savedmodel
from tf_score.families import score_model
from tf_score.sampling import budget
from tf_score.training import optimizers
from tf_score.training.bundle import LossOutput, ModelBundle, Objective

tfd = tfp.distributions

ENCODERS = ("implicit", "gaussian")
ARCHS = ("mlp", "conv")


# --- networks --------------------------------------------------------------------------------


class _Body(keras.layers.Layer):
    """x [B, H, W, C] (+ extra inputs [B, k]) -> hidden features.

    ``mlp``: flatten x, concatenate the extras, dense layers (the paper's MNIST networks).
    ``conv``: three stride-2 4x4 convolutions (ngf, 2 ngf, 4 ngf) on x, flatten, concatenate
    the extras, dense layers. Sub-layers are attributes (not a list) so checkpoints see them.
    """

    def __init__(self, hidden_units, activation, arch, ngf=32, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.arch = arch
        self.ngf = int(ngf)
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        if arch == "conv":
            for i, mult in enumerate((1, 2, 4)):
                conv = keras.layers.Conv2D(
                    self.ngf * mult, 4, strides=2, padding="same", activation=activation
                )
                setattr(self, f"conv_{i}", conv)
        for i, units in enumerate(self.hidden_units):
            setattr(self, f"dense_{i}", keras.layers.Dense(units, activation=activation))

    def build(self, *input_shapes):
        # Sub-layers build on their first call (their input sizes depend on the extras).
        self.built = True

    def call(self, x, *extras):
        h = x
        if self.arch == "conv":
            for i in range(3):
                h = getattr(self, f"conv_{i}")(h)
        h = keras.ops.reshape(h, [keras.ops.shape(h)[0], -1])
        h = keras.ops.concatenate([h, *extras], axis=-1) if extras else h
        for i in range(len(self.hidden_units)):
            h = getattr(self, f"dense_{i}")(h)
        return h


class _VAENetwork(keras.Model):
    """Shared constructor arguments and config of the four VAE networks."""

    def __init__(
        self,
        image_shape,
        latent_dim: int,
        hidden_units=(256, 256),
        activation: str = "tanh",
        arch: str = "mlp",
        ngf: int = 32,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.latent_dim = int(latent_dim)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.arch = arch
        self.ngf = int(ngf)
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if arch == "conv" and (self.image_shape[0] % 8 or self.image_shape[1] % 8):
            raise ValueError(
                f"arch='conv' needs image height and width divisible by 8 (e.g. 32x32, 64x64), "
                f"got {self.image_shape[:2]}; use arch='mlp'"
            )

    def _body(self, name):
        return _Body(self.hidden_units, self.activation, self.arch, self.ngf, name=name)

    def get_config(self):
        return {
            **super().get_config(),
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
            "arch": self.arch,
            "ngf": self.ngf,
        }

    def _dummy_x(self):
        return tf.zeros((1, *self.image_shape))


@keras.saving.register_keras_serializable(package="tf_score")
class ImplicitEncoder(_VAENetwork):
    """z = h_phi(x, eps): [x, eps] -> hidden -> z, with eps ~ N(0, I_latent_dim)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.body = self._body("body")
        self.out = keras.layers.Dense(self.latent_dim, name="z")

    def build(self, input_shape=None):
        self.call(self._dummy_x(), tf.zeros((1, self.latent_dim)))
        self.built = True

    def call(self, x, eps):
        return self.out(self.body(x, eps))

    def sample(self, x, seed):
        eps = tf.random.stateless_normal([tf.shape(x)[0], self.latent_dim], seed=seed, alg="philox")
        return self(x, eps)


@keras.saving.register_keras_serializable(package="tf_score")
class GaussianEncoder(_VAENetwork):
    """q(z|x) = N(loc(x), diag(scale(x)^2)); scale = softplus(.) + 1e-4."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.body = self._body("body")
        self.loc = keras.layers.Dense(self.latent_dim, name="loc")
        self.raw_scale = keras.layers.Dense(self.latent_dim, name="raw_scale")

    def build(self, input_shape=None):
        self.call(self._dummy_x())
        self.built = True

    def call(self, x):
        h = self.body(x)
        return self.loc(h), keras.ops.softplus(self.raw_scale(h)) + 1e-4

    def distribution(self, x) -> tfd.Distribution:
        loc, scale = self(x)
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=scale)

    def sample(self, x, seed):
        loc, scale = self(x)
        return loc + scale * tf.random.stateless_normal(tf.shape(loc), seed=seed, alg="philox")


@keras.saving.register_keras_serializable(package="tf_score")
class BernoulliDecoder(_VAENetwork):
    """z -> Bernoulli logits of every pixel [B, H, W, C].

    ``mlp``: z -> hidden -> H*W*C. ``conv``: z -> hidden -> (H/8, W/8, 4 ngf) -> three
    stride-2 transposed convolutions (the mirror of the conv encoder).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h, w, c = self.image_shape
        for i, units in enumerate(self.hidden_units):
            setattr(self, f"dense_{i}", keras.layers.Dense(units, activation=self.activation))
        if self.arch == "mlp":
            self.logits = keras.layers.Dense(h * w * c, name="logits")
        else:
            self.project = keras.layers.Dense(
                (h // 8) * (w // 8) * 4 * self.ngf, activation=self.activation, name="project"
            )
            for i, mult in enumerate((2, 1)):
                deconv = keras.layers.Conv2DTranspose(
                    self.ngf * mult, 4, strides=2, padding="same", activation=self.activation
                )
                setattr(self, f"deconv_{i}", deconv)
            self.logits = keras.layers.Conv2DTranspose(c, 4, strides=2, padding="same")

    def build(self, input_shape=None):
        self.call(tf.zeros((1, self.latent_dim)))
        self.built = True

    def call(self, z):
        h = z
        for i in range(len(self.hidden_units)):
            h = getattr(self, f"dense_{i}")(h)
        hh, ww, c = self.image_shape
        if self.arch == "mlp":
            return keras.ops.reshape(self.logits(h), [-1, hh, ww, c])
        h = keras.ops.reshape(self.project(h), [-1, hh // 8, ww // 8, 4 * self.ngf])
        for i in range(2):
            h = getattr(self, f"deconv_{i}")(h)
        return self.logits(h)


@keras.saving.register_keras_serializable(package="tf_score")
class LatentScoreNetwork(_VAENetwork):
    """s_psi(x, z) ~ grad_z log q(z|x): [x, z] -> hidden -> latent_dim."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.body = self._body("body")
        self.out = keras.layers.Dense(self.latent_dim, name="score")

    def build(self, input_shape=None):
        self.call(self._dummy_x(), tf.zeros((1, self.latent_dim)))
        self.built = True

    def call(self, x, z):
        return self.out(self.body(x, z))


# --- distributions and losses ----------------------------------------------------------------


def prior(latent_dim: int) -> tfd.Distribution:
    """p(z) = N(0, I)."""
    return tfd.MultivariateNormalDiag(loc=tf.zeros([latent_dim]), scale_diag=tf.ones([latent_dim]))


def likelihood(logits: tf.Tensor) -> tfd.Distribution:
    """p(x|z): independent Bernoulli pixels; the event is the whole image."""
    return tfd.Independent(
        tfd.Bernoulli(logits=logits, dtype=tf.float32),
        reinterpreted_batch_ndims=len(logits.shape) - 1,
    )


def binarize(x: tf.Tensor, seed) -> tf.Tensor:
    """Dynamic binarisation: each pixel ~ Bernoulli(intensity), redrawn every time."""
    return tf.cast(
        tf.random.stateless_uniform(tf.shape(x), seed=seed, alg="philox") < x, tf.float32
    )


def entropy_surrogate(score: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
    """sum(stop_gradient(score) * z) per example; its gradient is -grad H(q) when score is
    grad_z log q(z|x)."""
    return tf.reduce_sum(tf.stop_gradient(tf.cast(score, tf.float32)) * z, axis=-1)


def network_kwargs(cfg: ExperimentConfig) -> dict:
    """The VAE networks' settings of an experiment (``network`` section, the data's shape)."""
    net = cfg.network
    return dict(
        image_shape=tuple(cfg.data.data_shape),
        latent_dim=net.latent_dim,
        hidden_units=tuple(net.hidden_units),
        activation=net.activation,
        arch=net.network,
        ngf=net.ngf,
    )


def _maybe_binarize(cfg: ExperimentConfig, x, seed):
    return binarize(x, seed) if cfg.data.binarize else tf.convert_to_tensor(x, tf.float32)


def implicit_autoencoder_loss(cfg: ExperimentConfig, models: dict, x, seed) -> LossOutput:
    """The score-entropy surrogate of the negative ELBO, per example."""
    bin_seed, eps_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg="philox"))
    x = _maybe_binarize(cfg, x, bin_seed)
    z = models["encoder"].sample(x, eps_seed)
    rec = -likelihood(models["decoder"](z)).log_prob(x)
    prior_nll = -prior(cfg.network.latent_dim).log_prob(z)
    entropy_term = entropy_surrogate(models["score"](x, z), z)
    return LossOutput(
        rec + prior_nll + entropy_term,
        metrics={"reconstruction": rec, "prior_nll": prior_nll},
    )


def entropy_score_loss(cfg: ExperimentConfig, models: dict, x, seed) -> LossOutput:
    """SSM-VR of s_psi(x, .) on fresh samples of the (fixed) encoder."""
    bin_seed, eps_seed, proj_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3, alg="philox")
    )
    x = _maybe_binarize(cfg, x, bin_seed)
    z = tf.stop_gradient(models["encoder"].sample(x, eps_seed))
    if cfg.loss.n_particles > 1:
        x = tf.repeat(x, cfg.loss.n_particles, axis=0)
    loss = losses.ssm_vr(
        lambda zz: models["score"](x, zz), z, proj_seed, cfg.loss.n_particles, cfg.loss.projection
    )
    return LossOutput(loss)


def gaussian_negative_elbo(cfg: ExperimentConfig, models: dict, x, seed) -> LossOutput:
    """-ELBO = -E_q log p(x|z) + KL(q(z|x) || p(z)), analytic KL, one reparameterised z."""
    bin_seed, eps_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg="philox"))
    x = _maybe_binarize(cfg, x, bin_seed)
    loc, scale = models["encoder"](x)
    q = tfd.MultivariateNormalDiag(loc=loc, scale_diag=scale)
    z = loc + scale * tf.random.stateless_normal(tf.shape(loc), seed=eps_seed, alg="philox")
    rec = -likelihood(models["decoder"](z)).log_prob(x)
    kl = tfd.kl_divergence(q, prior(cfg.network.latent_dim))
    return LossOutput(rec + kl, metrics={"reconstruction": rec, "kl": kl})


def model_fns(cfg: ExperimentConfig) -> dict:
    kw = network_kwargs(cfg)

    def built(cls, name):
        def make():
            m = cls(name=name, **kw)
            m.build()
            return m

        return make

    fns = {"decoder": built(BernoulliDecoder, "decoder")}
    if cfg.network.vae_encoder == "implicit":
        fns["encoder"] = built(ImplicitEncoder, "encoder")
        fns["score"] = built(LatentScoreNetwork, "score")
    else:
        fns["encoder"] = built(GaussianEncoder, "encoder")
    return fns


def _optimizer(cfg: ExperimentConfig):
    return optimizers.make_optimizer(cfg.optimizer, cfg.train.num_steps)


def objectives(cfg: ExperimentConfig) -> list[Objective]:
    """Implicit: [score net (SSM-VR), autoencoder (surrogate)]; Gaussian: [autoencoder]."""

    def ae_vars(models):
        return models["encoder"].trainable_variables + models["decoder"].trainable_variables

    if cfg.network.vae_encoder == "gaussian":
        return [
            Objective(
                "autoencoder",
                lambda models, x, seed: gaussian_negative_elbo(cfg, models, x, seed),
                ae_vars,
                lambda: _optimizer(cfg),
                metric_names=("reconstruction", "kl"),
            )
        ]
    return [
        Objective(
            "score_net",
            lambda models, x, seed: entropy_score_loss(cfg, models, x, seed),
            lambda models: models["score"].trainable_variables,
            lambda: _optimizer(cfg),
        ),
        Objective(
            "autoencoder",
            lambda models, x, seed: implicit_autoencoder_loss(cfg, models, x, seed),
            ae_vars,
            lambda: _optimizer(cfg),
            metric_names=("reconstruction", "prior_nll"),
        ),
    ]


def prior_samples(cfg: ExperimentConfig, decoder, n: int, seed) -> tf.Tensor:
    """Decoder means (pixel probabilities) of n prior draws."""
    z = tf.random.stateless_normal([n, cfg.network.latent_dim], seed=seed, alg="philox")
    return tf.sigmoid(decoder(z))


def reconstructions(cfg: ExperimentConfig, models: dict, x, seed) -> tf.Tensor:
    """Decoder means of z ~ q(z|x)."""
    return tf.sigmoid(models["decoder"](models["encoder"].sample(x, seed)))


def bundle(cfg):
    """(bundle, image shape) of a VAE ``ExperimentConfig``; the images are loaded here."""

    images, shape, _, cache = data.load_training_images(cfg.data)
    num_images = data.count_examples(images) if cache else None
    score_model.check_images(cfg, shape, num_images, spatial=False)
    vcfg = cfg.replace(data={"data_shape": tuple(int(d) for d in shape)})
    model_fns(vcfg)["decoder"]()  # fail now, before anything is written, on a bad shape
    return vae_bundle(vcfg, images, seed=int(cfg.seed), cache=cache), shape


def vae_bundle(
    cfg: ExperimentConfig,
    images: tf.data.Dataset,
    seed: int,
    cache: bool = True,
    num_summary_images: int = 16,
) -> ModelBundle:
    """Train either VAE on dequantised images in [0, 1] (binarised inside the loss)."""
    data_seed = tf.constant([seed, 0x7AE], tf.int32)
    num_examples = data.count_examples(images)
    summary_x = next(
        iter(
            data.image_training_dataset(
                images, num_summary_images, tf.constant([seed, 0x5A]), num_examples=num_examples
            )
        )
    )
    summary_x = binarize(summary_x, tf.constant([seed, 0x5B])) if cfg.data.binarize else summary_x

    dataset_fn = data.image_dataset_fn(images, data_seed, cache=cache)

    def image_summaries(ema_models, step):
        rec = reconstructions(cfg, ema_models, summary_x, tf.constant([seed, 3])).numpy()
        pairs = np.concatenate([summary_x.numpy(), rec], axis=2)  # data | reconstruction
        prior_x = prior_samples(cfg, ema_models["decoder"], 64, tf.constant([seed, 4])).numpy()
        return {
            "vae/reconstructions": plotting.image_grid(pairs, ncols=4),
            "vae/prior_samples": plotting.image_grid(prior_x),
        }

    def custom_summaries(ema_models, step):
        z = ema_models["encoder"].sample(summary_x, tf.constant([seed, 5]))
        tf.summary.histogram("vae/latent_z", z)
        for k in range(min(cfg.network.latent_dim, 4)):
            tf.summary.histogram(f"vae/latent_z_{k}", z[:, k])

    return ModelBundle(
        model_fns=model_fns(cfg),
        objectives=objectives(cfg),
        dataset_fn=dataset_fn,
        num_levels=0,
        image_summaries=image_summaries,
        custom_summaries=custom_summaries,
    )


# --- evaluation: IWAE (AIS: ``likelihood.ais_log_likelihood``) ---------------------------------


def decoder_log_likelihood_fn(decoder):
    """(z, x) -> log p(x|z) for a Bernoulli decoder, for ``ais_log_likelihood``."""
    return lambda z, x: likelihood(decoder(z)).log_prob(x)


class IWAEResult(NamedTuple):
    iwae: tf.Tensor  # [B] log (1/K) sum_k w_k, a lower bound of log p(x) tightening with K
    elbo: tf.Tensor  # [B] (1/K) sum_k log w_k, the ELBO estimated from the same draws


#: bytes of pixels one chunk of the IWAE bound decodes at once (8 float32 copies of a row)
IWAE_CHUNK_BYTES = 64 << 20


def iwae_bound(encoder: GaussianEncoder, decoder, x, num_samples, seed,
               chunk_bytes: int = IWAE_CHUNK_BYTES) -> IWAEResult:  # fmt: skip
    """IWAE bound with K = ``num_samples`` draws z_k ~ q(z|x), w_k = p(x, z_k) / q(z_k|x).

    The draws are decoded a chunk of k at a time (k x B rows of about ``chunk_bytes`` of
    pixels; chunk c drawn from fold_in(seed, c)) in a ``tf.while_loop``, so memory stays
    bounded whatever K; only log w [K, B] is kept."""
    x = tf.convert_to_tensor(x, tf.float32)
    q, p_z = encoder.distribution(x), prior(encoder.latent_dim)
    b, k = tf.shape(x)[0], tf.cast(num_samples, tf.int32)
    rows = max(1, chunk_bytes // (8 * 4 * int(np.prod(x.shape[1:]))))
    per_chunk = tf.maximum(1, rows // b)
    num_chunks = (k + per_chunk - 1) // per_chunk

    def body(c, log_ws):
        n = tf.minimum(per_chunk, k - c * per_chunk)
        z = q.sample(n, seed=tf.random.experimental.stateless_fold_in(seed, c, alg="philox"))
        logits = decoder(tf.reshape(z, [n * b, -1]))
        log_px_z = tf.reshape(likelihood(logits).log_prob(tile_batch(x, n)), [n, b])
        return c + 1, log_ws.write(c, log_px_z + p_z.log_prob(z) - q.log_prob(z))

    empty = tf.TensorArray(tf.float32, size=num_chunks, infer_shape=False)
    _, log_ws = tf.while_loop(lambda c, _: c < num_chunks, body, (tf.constant(0), empty))
    log_w = log_ws.concat()  # [K, B]
    log_k = tf.math.log(tf.cast(k, tf.float32))
    return IWAEResult(tf.reduce_logsumexp(log_w, axis=0) - log_k, tf.reduce_mean(log_w, axis=0))


def _decoder_cost(cfg, decoder) -> budget.Cost:
    """The cost of decoding one latent into log p(x|z) (one unit of a VAE request's work)."""
    z = tf.TensorSpec([1, cfg.network.latent_dim], tf.float32)
    x = tf.TensorSpec([1, *cfg.data.data_shape], tf.float32)
    return budget.graph_cost(lambda z, x: likelihood(decoder(z)).log_prob(x), z, x)


def _vae_endpoints(models: dict, cfg, caps: dict, cost: budget.Cost) -> dict:
    """The VAE's signatures, each input checked (counts within ``caps``, floats finite, work
    of decodes x ``cost`` within caps["max_evaluations"]) before any allocation."""
    enc, dec, sm = models["encoder"], models["decoder"], savedmodel
    x_spec = tf.TensorSpec([None, *cfg.data.data_shape], tf.float32, name="x")
    z_spec = tf.TensorSpec([None, cfg.network.latent_dim], tf.float32, name="z")

    def checked(x, name, *more):
        checks = sm.in_range(tf.shape(x)[0], "batch size", 1, caps["max_batch"])
        return sm.checked(x, checks + sm.finite_input(x, name) + list(more))

    def decodes(n, what):  # the work cap, in decodes of one latent
        return sm.work_cap(tf.cast(n, tf.float64), caps["max_evaluations"], cost, what)

    @tf.function(input_signature=[x_spec, sm.SEED_SPEC])
    def encode(x, seed):
        x = checked(x, "x")
        out = {"z": enc.sample(x, seed)}
        if cfg.network.vae_encoder == "gaussian":
            out["loc"], out["scale"] = enc(x)
        return sm.finite_output(out)

    @tf.function(input_signature=[z_spec])
    def decode(z):
        probs = tf.sigmoid(dec(checked(z, "z")))
        return sm.finite_output({"probs": probs, "images_uint8": sm.to_uint8(probs)})

    @tf.function(input_signature=[sm.NUM_SAMPLES_SPEC, sm.SEED_SPEC])
    def sample(num_samples, seed):
        n = sm.checked(num_samples, sm.in_range(num_samples, "num_samples", 1,
                                                  caps["max_samples"]))  # fmt: skip
        probs = prior_samples(cfg, dec, sm.checked(n, decodes(n, "num_samples (decodes)")), seed)
        return sm.finite_output({"samples": probs, "samples_uint8": sm.to_uint8(probs)})

    endpoints = {"sample": sample, "encode": encode, "decode": decode}
    if cfg.network.vae_encoder != "gaussian":
        return endpoints

    @tf.function(input_signature=[x_spec, sm.NUM_SAMPLES_SPEC, sm.SEED_SPEC])
    def log_likelihood_bound(x, num_samples, seed):
        k_range = sm.in_range(num_samples, "num_samples", 1, caps["max_iwae_samples"])
        x = checked(x, "x", *k_range)  # the counts first, then their product
        rows = tf.cast(tf.shape(x)[0], tf.int64) * tf.cast(num_samples, tf.int64)
        x, k = sm.checked((x, num_samples), decodes(rows, "batch size x num_samples (decodes)"))
        r = iwae_bound(enc, dec, x, k, seed)
        return sm.finite_output({"iwae": r.iwae, "elbo": r.elbo})

    return {**endpoints, "log_likelihood_bound": log_likelihood_bound}


def export_vae(
    models: dict,
    cfg,
    path: str,
    max_samples: int = savedmodel.MAX_SAMPLES,
    max_batch: int = 1024,
    max_iwae_samples: int = 5000,
    max_evaluations: int = savedmodel.MAX_EVALUATIONS,
) -> str:
    """Write a servable SavedModel of a trained VAE (``families.vae``) to ``path``: ``sample``
    (= serving_default), ``encode``, ``decode``, ``log_likelihood_bound`` (Gaussian encoder)
    and ``limits``. A request's work is its decodes (num_samples, or batch x importance
    samples) x the decoder's cost (``sampling.budget``), at most ``max_evaluations``."""
    caps = dict(max_samples=max_samples, max_batch=max_batch,
                max_iwae_samples=max_iwae_samples, max_evaluations=max_evaluations)  # fmt: skip
    cost = _decoder_cost(cfg, models["decoder"])
    archive = keras.export.ExportArchive()
    for m in models.values():
        archive.track(m)
    for name, fn in _vae_endpoints(models, cfg, caps, cost).items():
        archive.add_endpoint(name, fn)  # the first, sample, is also serving_default
    archive.add_endpoint(
        "limits", savedmodel.limits_endpoint(**caps, **savedmodel.cost_outputs(cost))
    )
    archive.write_out(path, verbose=False)
    return path
