"""SavedModel export for TF Serving (``keras.export.ExportArchive``), with in-graph sampling.

Layout: ``EXPORT_DIR/<model_name>/<version>/`` (TF Serving serves the highest version).

Score models (``export_score_model``):
  - ``serving_default`` = ``sample``: (num_samples int32 [], seed int32 [2]) -> samples float32
    [N, *shape] (images clipped to [0, 1]) and, for images, ``samples_uint8``: the run's
    sampler with its options (``SamplerConfig``) runs in the graph, seeded as
    ``runs.generate``: serving seed (s, 0) gives the samples of ``generate(run, N, seed=s)``.
  - ``sample_with_steps``: annealed Langevin with n_steps_each int32 [] and step_lr float32 [].
  - ``score``: (x [B, *shape], levels int32 [B], indices into the schedule) -> score.
  - ``score_at_sigma``: (x, sigma float32 [B]) -> the score at the level nearest to sigma
    (in log space), and that level.
VAEs (``export_vae``): ``encode``, ``decode``, ``sample`` and, for the Gaussian encoder,
``log_likelihood_bound`` (the IWAE bound).

Every request is validated in the graph before any allocation: counts must be >= 1 and at
most the export-time caps, levels in range, float inputs finite, step_lr within its range and
the total work (num_samples x network evaluations) within ``max_evaluations``, so one request
cannot exhaust the server; outputs are checked finite before they are returned. ``limits``
returns the caps.
``samplers.draw`` / the VAE functions are the exact in-process equivalents of the endpoints.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from tf_score.sampling import samplers

SEED_SPEC = tf.TensorSpec([2], tf.int32, name="seed")
NUM_SAMPLES_SPEC = tf.TensorSpec([], tf.int32, name="num_samples")


def version_dir(export_dir: str, model_name: str, version: int) -> str:
    if version < 1:
        raise ValueError(f"export version must be >= 1 (TF Serving ignores 0), got {version}")
    return os.path.join(export_dir, model_name, str(int(version)))


def _in_range(value, name: str, low, high):
    """Assert low <= value <= high in the graph, with a message naming the input."""
    return [
        tf.debugging.assert_greater_equal(
            value, tf.cast(low, value.dtype), message=f"{name} must be >= {low}"
        ),
        tf.debugging.assert_less_equal(
            value,
            tf.cast(high, value.dtype),
            message=f"{name} must be <= {high} (the cap set when this model was exported)",
        ),
    ]


def _checked(value, checks):
    """``value`` (a tensor or a tuple of them) computed only after ``checks`` pass: every op
    of the request must consume it, or it may run before the assertions."""
    with tf.control_dependencies(checks):
        if isinstance(value, tuple):
            return tuple(tf.identity(v) for v in value)
        return tf.identity(value)


def _finite_input(value, name: str):
    """Assert every entry of a float input is finite (NaN / inf requests are refused)."""
    return [tf.debugging.assert_all_finite(value, message=f"{name} must be finite")]


def _finite_output(outputs: dict) -> dict:
    """The float outputs, returned only if finite: a model or setting that diverges is an
    error naming the output, never NaN samples or scores."""
    return {
        k: tf.debugging.assert_all_finite(
            v, message=f"{k} came out non-finite: the model or sampler settings diverged"
        )
        if v.dtype.is_floating
        else v
        for k, v in outputs.items()
    }


def _work_cap(evaluations, max_evaluations: int):
    """Assert one request's network evaluations (samples x evaluations each) are within the
    export-time cap (int64: the product of int32 caps overflows int32)."""
    return _in_range(tf.cast(evaluations, tf.int64), "num_samples x network evaluations", 1,
                     max_evaluations)  # fmt: skip


def _to_uint8(x):
    """Images in [0, 1] -> uint8 0..255."""
    return tf.cast(tf.round(x * 255.0), tf.uint8)


def _image_outputs(x, is_image: bool) -> dict:
    if not is_image:
        return {"samples": x}
    x = tf.clip_by_value(x, 0.0, 1.0)
    return {"samples": x, "samples_uint8": _to_uint8(x)}


def _score_endpoints(score_fn, sigmas, data_shape, max_score_batch):
    """The ``score`` (by level index) and ``score_at_sigma`` (nearest level) endpoints."""
    num_levels = len(sigmas)
    log_sig = tf.math.log(tf.constant(sigmas))
    x_spec = tf.TensorSpec([None, *data_shape], tf.float32, name="x")

    def score_impl(x, level):
        checks = _in_range(tf.shape(x)[0], "batch size of x", 1, max_score_batch)
        checks += _finite_input(x, "x")
        checks += _in_range(level, "levels", 0, num_levels - 1)
        checks.append(
            tf.debugging.assert_equal(
                tf.shape(level)[0], tf.shape(x)[0], message="levels needs one entry per x"
            )
        )
        x, level = _checked((x, level), checks)
        return tf.cast(score_fn(x, level), tf.float32)

    @tf.function(input_signature=[x_spec, tf.TensorSpec([None], tf.int32, name="levels")])
    def score(x, levels):
        return _finite_output({"score": score_impl(x, levels)})

    @tf.function(input_signature=[x_spec, tf.TensorSpec([None], tf.float32, name="sigma")])
    def score_at_sigma(x, sigma):
        checks = _finite_input(sigma, "sigma")
        checks.append(tf.debugging.assert_positive(sigma, message="sigma must be > 0"))
        sigma = _checked(sigma, checks)
        level = tf.argmin(
            tf.abs(tf.math.log(sigma)[:, None] - log_sig[None, :]), axis=1, output_type=tf.int32
        )
        return _finite_output({"score": score_impl(x, level), "levels": level})

    return score, score_at_sigma


def export_score_model(
    model: keras.Model,
    sigmas,
    data_shape,
    path: str,
    sampler=None,
    init_range=(0.0, 1.0),
    max_samples: int = 256,
    max_steps_each: int = 1000,
    max_score_batch: int = 1024,
    score_fn=None,
    init_mean=None,
    max_evaluations: int = 1_000_000,
    step_lr_range: tuple[float, float] | None = None,
) -> str:
    """Write a servable SavedModel of a noise-conditional score network to ``path``;
    ``score_fn(x, levels)`` is its score on ``sigmas`` if that is not ``model`` itself (a
    continuous denoiser, ``edm.score_on_grid``).

    ``serving_default`` runs ``sampler`` (a ``SamplerConfig``: the registered sampler and its
    options, baked in) through ``samplers.draw``, seeded exactly as ``runs.generate``.
    Caps fixed here bound every request: ``max_samples``, ``max_steps_each``, and
    ``max_evaluations`` network evaluations in all (num_samples x evaluations per sample;
    the adaptive ODE's count is checked after it ran); ``sample_with_steps`` takes step_lr
    in ``step_lr_range`` (default: 1e-3 to 10 x the run's step_lr). The ``limits``
    endpoint returns them.
    """
    from tf_score.config import SamplerConfig

    sampler = sampler or SamplerConfig()
    score_fn = score_fn or model
    sigmas = np.asarray(sigmas, np.float32)
    data_shape = tuple(int(d) for d in data_shape)
    is_image = len(data_shape) == 3
    sig = tf.constant(sigmas)
    if not 1 <= sampler.n_steps_each <= max_steps_each:
        raise ValueError(
            f"n_steps_each ({sampler.n_steps_each}) must be in [1, max_steps_each={max_steps_each}]"
        )
    init_range = tuple(float(v) for v in init_range)
    lr_low, lr_high = step_lr_range or (sampler.step_lr * 1e-3, sampler.step_lr * 10.0)
    if not 0 < lr_low <= lr_high or not np.isfinite(lr_high):
        raise ValueError(f"step_lr_range must be 0 < low <= high < inf, got {step_lr_range}")
    per_sample = samplers.evaluations_per_sample(sampler.sampler, len(sigmas), sampler.options())

    def draw(name, num_samples, seed, **options):
        shape = tf.concat([tf.reshape(num_samples, [1]), tf.constant(data_shape, tf.int32)], 0)
        out = samplers.draw(
            name, score_fn, sig, shape, seed, init_range, init_mean=init_mean, **options
        )
        # an adaptive count is only known afterwards: refuse its result if over the cap
        cap = _work_cap(tf.cast(num_samples, tf.int64) * tf.cast(out.num_evals, tf.int64),
                        max_evaluations)  # fmt: skip
        x = _checked(out.samples, cap)
        return _finite_output({**_image_outputs(x, is_image), "num_evals": out.num_evals})

    @tf.function(input_signature=[NUM_SAMPLES_SPEC, SEED_SPEC])
    def sample(num_samples, seed):
        num_samples = _checked(num_samples, _in_range(num_samples, "num_samples", 1, max_samples))
        if per_sample is not None:  # after the range check, so a request fails on that first
            cap = _work_cap(tf.cast(num_samples, tf.int64) * per_sample, max_evaluations)
            num_samples = _checked(num_samples, cap)
        return draw(sampler.sampler, num_samples, seed, **sampler.options())

    @tf.function(
        input_signature=[
            NUM_SAMPLES_SPEC,
            SEED_SPEC,
            tf.TensorSpec([], tf.int32, name="n_steps_each"),
            tf.TensorSpec([], tf.float32, name="step_lr"),
        ]
    )
    def sample_with_steps(num_samples, seed, n_steps_each, step_lr):
        checks = _in_range(num_samples, "num_samples", 1, max_samples)
        checks += _in_range(n_steps_each, "n_steps_each", 1, max_steps_each)
        checks += _finite_input(step_lr, "step_lr")
        num_samples, n_steps_each = _checked((num_samples, n_steps_each), checks)
        step_lr = _checked(step_lr, _in_range(step_lr, "step_lr", lr_low, lr_high))
        evals = tf.cast(n_steps_each, tf.int64) * len(sigmas) + int(sampler.denoise)
        cap = _work_cap(tf.cast(num_samples, tf.int64) * evals, max_evaluations)
        num_samples = _checked(num_samples, cap)
        return draw(
            "annealed_langevin",
            num_samples,
            seed,
            step_lr=step_lr,
            n_steps_each=n_steps_each,
            denoise=sampler.denoise,
        )

    limits = _limits_endpoint(
        max_samples=max_samples, max_steps_each=max_steps_each, max_score_batch=max_score_batch,
        max_evaluations=max_evaluations, step_lr_min=lr_low, step_lr_max=lr_high,
    )  # fmt: skip
    score, score_at_sigma = _score_endpoints(score_fn, sigmas, data_shape, max_score_batch)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("sample", sample)  # the first endpoint is also serving_default
    archive.add_endpoint("sample_with_steps", sample_with_steps)
    archive.add_endpoint("score", score)
    archive.add_endpoint("score_at_sigma", score_at_sigma)
    archive.add_endpoint("limits", limits)
    archive.write_out(path, verbose=False)
    return path


def _limits_endpoint(**caps):
    """``limits``: the export-time caps as outputs (``saved_model_cli run --signature_def
    limits --input_exprs 'unused=0'`` prints them; the input is ignored)."""

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="unused")])
    def limits(unused):
        del unused
        return {
            k: tf.constant(v, tf.float32 if isinstance(v, float) else tf.int64)
            for k, v in caps.items()
        }

    return limits


def export_vae(
    models: dict,
    cfg,
    path: str,
    max_samples: int = 1024,
    max_batch: int = 1024,
    max_iwae_samples: int = 5000,
) -> str:
    """Write a servable SavedModel of a trained VAE (``tf_score.vae``) to ``path``."""
    from tf_score.families import vae

    enc, dec = models["encoder"], models["decoder"]
    shape = tuple(cfg.image_shape)
    x_spec = tf.TensorSpec([None, *shape], tf.float32, name="x")

    def batch_checked(x):
        return _checked(x, _in_range(tf.shape(x)[0], "batch size", 1, max_batch))

    @tf.function(input_signature=[x_spec, SEED_SPEC])
    def encode(x, seed):
        x = batch_checked(x)
        out = {"z": enc.sample(x, seed)}
        if cfg.encoder == "gaussian":
            out["loc"], out["scale"] = enc(x)
        return out

    @tf.function(input_signature=[tf.TensorSpec([None, cfg.latent_dim], tf.float32, name="z")])
    def decode(z):
        z = batch_checked(z)
        probs = tf.sigmoid(dec(z))
        return {"probs": probs, "images_uint8": _to_uint8(probs)}

    @tf.function(input_signature=[NUM_SAMPLES_SPEC, SEED_SPEC])
    def sample(num_samples, seed):
        num_samples = _checked(num_samples, _in_range(num_samples, "num_samples", 1, max_samples))
        probs = vae.prior_samples(cfg, dec, num_samples, seed)
        return {"samples": probs, "samples_uint8": _to_uint8(probs)}

    archive = keras.export.ExportArchive()
    for m in models.values():
        archive.track(m)
    archive.add_endpoint("sample", sample)
    archive.add_endpoint("encode", encode)
    archive.add_endpoint("decode", decode)
    if cfg.encoder == "gaussian":

        @tf.function(
            input_signature=[x_spec, tf.TensorSpec([], tf.int32, name="num_samples"), SEED_SPEC]
        )
        def log_likelihood_bound(x, num_samples, seed):
            x = batch_checked(x)
            k = _checked(num_samples, _in_range(num_samples, "num_samples", 1, max_iwae_samples))
            r = vae.iwae_bound(enc, dec, x, k, seed)
            return {"iwae": r.iwae, "elbo": r.elbo}

        archive.add_endpoint("log_likelihood_bound", log_likelihood_bound)
    archive.write_out(path, verbose=False)
    return path
