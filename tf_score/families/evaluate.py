"""Evaluations of trained runs: the two-mode experiment, image quality against the
real-vs-real floor, and VAE test likelihood. ``metrics`` holds the pure formulas; this module
loads what they need, samples and summarises. Errors are ``EvaluationError``.
"""

from __future__ import annotations

import json
import os
import time
from typing import NamedTuple

import numpy as np

from tf_score import data, sampling
from tf_score.config import EvalConfig
from tf_score.evaluation import likelihood, metrics
from tf_score.families import classifier as classifiers  # `classifier` names the path
from tf_score.families import score_model, vae
from tf_score.families.run import Guidance, Run, generate_from, sampler_config
from tf_score.networks import contract
from tf_score.training.bundle import Monitor


class EvaluationError(RuntimeError):
    """An evaluation cannot run as asked; the message says what is missing."""


def _mean_se(values) -> dict:
    v = np.asarray(values, np.float64)
    return {
        "mean": float(v.mean()),
        "se": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0,
    }


# --- the two-mode experiment -----------------------------------------------------------------

#: (row key, sampler, score) of the seed's demonstration, in table order
TWO_MODE_ROWS = (
    ("plain_langevin", "langevin", "learned"),
    ("exact_plain_langevin", "langevin", "exact"),
    ("annealed_langevin", "annealed_langevin", "learned"),
    ("exact_annealed_langevin", "annealed_langevin", "exact"),
)


def chain_target(toy, run: Run, sampler: str, n: int, seed: int) -> np.ndarray:
    """``n`` exact samples of what a perfect chain of ``sampler`` draws: p for plain Langevin
    (the score of p itself); for annealed Langevin p_sigma_L = p * N(0, sigma_L^2 I), the
    last level's density, then, with the run's final denoise, its exact Tweedie step
    x + sigma_L^2 grad log p_sigma_L(x). The NCSN toy's sigma_L = 1 makes that p_1, not p."""
    import tensorflow as tf

    key = tf.constant([seed, 99991])
    if sampler == "langevin":
        return toy.sample(n, seed=key).numpy()
    sigma_last = float(run.sigmas[-1])
    x = toy.distribution(sigma_last).sample(n, seed=key)
    if sampling.options_of(run.config.sampler, sampler).get("denoise", False):
        x = x + sigma_last**2 * toy.score(x, sigma_last)
    return x.numpy()


class TwoModeResult(NamedTuple):
    metrics: dict
    #: row key -> samples [pooled n, 2]
    samples: dict
    exact: np.ndarray


def two_mode(
    run: Run,
    num_samples: int = 1280,
    num_batches: int = 4,
    seed: int = 0,
    num_permutations: int = 500,
    jit: bool = False,
) -> TwoModeResult:
    """Plain vs annealed Langevin with the learned and the exact score on a 2-D toy: mode
    weight (fraction with x1 + x2 > 0) over ``num_batches`` batches of ``num_samples``,
    MMD^2 and a kernel two-sample p-value of the first batch against exact samples of the
    chain's target (``chain_target``: p, or p_sigma_L for annealed Langevin). The
    sampler options are the run's; batch b is seeded (seed, b) as in ``generate_from``.
    The exact plain-Langevin score is that of p itself (sigma = 0)."""
    import tensorflow as tf

    if not run.config.data.is_toy:
        raise EvaluationError(f"the two-mode evaluation needs a 2-D toy run, not {run.workdir}")
    toy = data.get_toy(run.config.data.dataset)
    models = {
        "learned": {"langevin": run.model, "annealed_langevin": run.model},
        "exact": {  # plain Langevin on p itself; annealed on p_sigma
            "langevin": contract.ScoreFunction(lambda x, sigma: toy.score(x)),
            "annealed_langevin": contract.ScoreFunction(toy.score),
        },
    }
    samples, seconds = {}, {}
    for key, sampler, score in TWO_MODE_ROWS:
        out = generate_from(
            models[score][sampler],
            run.sigmas,
            run.space,
            num_samples * num_batches,
            seed,
            sampler_config(run.config.sampler, sampler),
            batch_size=num_samples,
            jit=jit,
        )
        samples[key], seconds[key] = out.samples, out.seconds
    exact = toy.sample(num_samples, seed=tf.constant([seed, 99991])).numpy()
    exact_ref = toy.sample(num_samples, seed=tf.constant([seed, 99992])).numpy()
    out = {"num_samples_per_batch": num_samples, "num_batches": num_batches}
    out["checkpoint_step"] = run.step
    out["num_permutations"] = num_permutations
    targets = {
        sampler: chain_target(toy, run, sampler, num_samples, seed)
        for sampler in ("langevin", "annealed_langevin")
    }
    for key, sampler, _ in TWO_MODE_ROWS:
        x, first = samples[key], samples[key][:num_samples]
        out[f"{key}_mode_weight"], out[f"{key}_mode_weight_se"] = metrics.mode_weight(x)
        out[f"{key}_mmd"] = metrics.mmd_rbf(first, targets[sampler])
        out[f"{key}_two_sample_p"] = metrics.kernel_two_sample_test(
            first, targets[sampler], num_permutations=num_permutations, seed=seed
        )[1]
    out["exact_samples_mode_weight"] = metrics.mode_weight(exact)[0]
    out["exact_vs_exact_mmd"] = metrics.mmd_rbf(exact_ref, exact)
    out["sample_seconds"] = seconds["plain_langevin"] + seconds["annealed_langevin"]
    summary = os.path.join(run.workdir, "train_summary.json")
    if os.path.exists(summary):
        with open(summary) as f:
            out["train_seconds"] = json.load(f)["train_seconds"]
    out["train_loss"] = run.config.loss.loss
    return TwoModeResult(out, samples, exact)


#: the fast samplers of a continuous-noise toy, in table order: the ones that pass the
#: two-sample test on its 40-level grid with the exact score (docs/results.md, "Every solver
#: on the two-mode toy"; the first-order euler, euler_ancestral, predictor_corrector and
#: consistent_annealed need about 200 levels there; the Dormand-Prince ode, at 281
#: evaluations and half of this evaluation's work, is in the benchmark with the others)
FAST_SAMPLERS = ("heun", "edm", "dpmpp_2m", "dpmpp_3m_sde", "dpm_adaptive")


def two_mode_fast(
    run: Run,
    sampler_names=FAST_SAMPLERS,
    num_samples: int = 1280,
    num_seeds: int = 5,
    seed: int = 0,
    num_permutations: int = 200,
) -> TwoModeResult:
    """The two-mode toy sampled as a user who wants samples of p would: each sampler with the
    run's own grid and options (a continuous model's small sigma_L). Per sampler:
    ``num_seeds`` draws of ``num_samples`` (sampling seeds ``seed``, ``seed`` + 1, ..., one
    batch each), the kernel two-sample p-value of each against as many exact samples, and
    the mode weight and per-mode standard deviations (1.0 for p) of all of them pooled."""
    import tensorflow as tf

    if not run.config.data.is_toy:
        raise EvaluationError(f"the two-mode evaluation needs a 2-D toy run, not {run.workdir}")
    toy = data.get_toy(run.config.data.dataset)
    out = {"num_samples_per_batch": num_samples, "num_seeds": num_seeds}
    out.update(checkpoint_step=run.step, num_permutations=num_permutations, samplers={})
    samples = {}
    for name in sampler_names:
        cfg = sampler_config(run.config.sampler, name)
        draws = [
            generate_from(run.model, run.sigmas, run.space, num_samples, seed + k, cfg)
            for k in range(num_seeds)
        ]
        p_values = [
            metrics.kernel_two_sample_test(
                d.samples, toy.sample(num_samples, seed=tf.constant([seed + k, 99991])).numpy(),
                num_permutations=num_permutations, seed=seed + k,
            )[1]
            for k, d in enumerate(draws)
        ]  # fmt: skip
        x = np.concatenate([d.samples for d in draws])
        w, se = metrics.mode_weight(x)
        out["samplers"][name] = {
            "num_evals": round(np.mean([d.num_evals for d in draws])), "mode_weight": w,
            "mode_weight_se": se, "mode_sd": metrics.mode_sds(x), "two_sample_p": p_values,
            "sample_seconds": sum(d.seconds for d in draws),
        }  # fmt: skip
        samples[name] = x
    exact = toy.sample(num_samples, seed=tf.constant([seed, 99991])).numpy()
    return TwoModeResult(out, samples, exact)


#: (labels, guidance) of the conditional toy's rows: each class, p itself, class 0 guided
CONDITIONAL_ROWS = {"class 0": (0, 1.0), "class 1": (1, 1.0), "no label": (None, 1.0),
                    "class 0, w=2": (0, 2.0), "class 1, w=2": (1, 2.0)}  # fmt: skip


def two_mode_conditional(run: Run, num_samples: int = 1280, seed: int = 0,
                         num_permutations: int = 200) -> TwoModeResult:  # fmt: skip
    """A class-conditional toy run with the run's sampler (``CONDITIONAL_ROWS``): each row's
    mode weight and per-mode sds, and the kernel two-sample p-value against the exact
    denoisers' samples through the same solver, grid and seed (``GaussianMixtureToy.denoise``:
    at w = 1 class k's Gaussian, with no label p)."""
    toy = data.get_toy(run.config.data.dataset)
    exact = contract.DenoiserFunction(toy.denoise, toy.num_classes, "exact")
    out = {"num_samples_per_batch": num_samples, "checkpoint_step": run.step, "rows": {},
           "num_permutations": num_permutations, "sampler": run.config.sampler.sampler}  # fmt: skip
    samples = {}
    for name, (label, w) in CONDITIONAL_ROWS.items():
        how = Guidance(label, w)
        drawn = [generate_from(m, run.sigmas, run.space, num_samples, seed, run.config.sampler,
                               guidance=how) for m in (run.model, exact)]  # fmt: skip
        x, ref = drawn[0].samples, drawn[1].samples
        p = metrics.kernel_two_sample_test(x, ref, num_permutations, seed=seed)[1]
        weight, se = metrics.mode_weight(x)
        out["rows"][name] = {"labels": label, "guidance": w, "num_evals": drawn[0].num_evals,
                             "mode_weight": weight, "mode_weight_se": se,
                             "mode_sd": metrics.mode_sds(x), "exact_mode_sd": metrics.mode_sds(ref),
                             "two_sample_p_vs_exact": p}  # fmt: skip
        samples[name] = x
    return TwoModeResult(
        out, samples, toy.sample(num_samples, seed=np.array([seed, 99991])).numpy()
    )


def two_mode_panels(result: TwoModeResult) -> dict:
    """Exact samples beside plain / annealed Langevin (first batch of each), titled."""

    n = result.metrics["num_samples_per_batch"]
    titles = {
        "plain_langevin": "plain Langevin, learned s",
        "exact_annealed_langevin": "annealed Langevin, exact s",
        "annealed_langevin": "annealed Langevin, learned s",
    }
    panels = {"exact samples": result.exact}
    for key, title in titles.items():
        w = result.metrics[f"{key}_mode_weight"]
        panels[f"{title} (w={w:.2f})"] = result.samples[key][:n]
    return panels


# --- image quality ---------------------------------------------------------------------------


class QualityReference(NamedTuple):
    """What FID/KID of samples need: the feature extractor, the training set's features and
    the held-out images of the real-vs-real floor (as many as the samples)."""

    extractor: metrics.FeatureExtractor
    features: np.ndarray
    held_out: np.ndarray
    classifier_path: str | None


def _images_array(data_cfg, split: str, labels: bool = False):
    """The split's uint8 images [N, H, W, C] (with ``labels``: and their int32 labels [N])."""
    images, *_ = data.load_training_images(data_cfg, split=split, labels=labels)
    batches = list(images.batch(4096).as_numpy_iterator())
    if labels:
        return tuple(np.concatenate(parts) for parts in zip(*batches, strict=True))
    return np.concatenate(batches)


def _extractor(run: Run, feature_extractor: str, classifier, inception_weights):
    """(extractor, classifier path or None, cache key) for ``feature_extractor``."""

    if feature_extractor == "inception":
        try:
            ex = metrics.inception_extractor(inception_weights)
        except metrics.MetricUnavailableError as e:
            raise EvaluationError(str(e)) from e
        return ex, None, f"inception:{inception_weights}"
    if not classifier:
        raise EvaluationError(
            "classifier features need a trained classifier (train it: run_train.py "
            "--flagfile=flags/presets/mnist_classifier.cfg --workdir=runs/mnist_classifier), "
            "or use the inception feature extractor"
        )
    try:
        net = classifiers.load_classifier(classifier)
    except (FileNotFoundError, ValueError) as e:
        raise EvaluationError(f"classifier {classifier}: {e}") from e
    if isinstance(net, classifiers.NoisyDigitClassifier):
        raise EvaluationError(f"classifier {classifier} is noise-conditional (network="
                              "noisy_conv, for classifier guidance); FID and KID take the "
                              "classifier of clean images (network=conv)")  # fmt: skip
    if tuple(net.image_shape) != run.data_shape:
        raise EvaluationError(
            f"classifier {classifier} takes images {net.image_shape}, but this model makes "
            f"{run.data_shape}"
        )
    path = classifier
    if os.path.isdir(path):
        path = os.path.join(path, classifiers.CLASSIFIER_FILE)
    path = os.path.realpath(path)
    return metrics.classifier_extractor(net), path, f"classifier:{path}:{os.path.getmtime(path)}"


def quality_reference(
    run: Run,
    num_samples: int,
    feature_extractor: str = "classifier",
    classifier: str | None = None,
    inception_weights: str = "imagenet",
    cache_dir: str | None = None,
) -> QualityReference:
    """Load everything FID/KID of ``num_samples`` samples need, every error before sampling.
    The training features are cached in ``cache_dir`` (default: the workdir, unless the run
    is ``read_only``), keyed by the extractor (and the classifier file's mtime) and the data
    set."""

    extractor, net_path, key = _extractor(run, feature_extractor, classifier, inception_weights)
    dataset = run.config.data.dataset
    if dataset in ("folder", "npz") or run.config.data.is_toy:
        raise EvaluationError(
            f"image quality needs a tfds data set with train and test splits, not {dataset}"
        )
    try:
        held = _images_array(run.config.data, "test")
    except data.DataUnavailableError as e:
        raise EvaluationError(str(e)) from e
    if len(held) < num_samples:
        raise EvaluationError(
            f"num_samples={num_samples} is more than the {len(held)} test images of the floor"
        )
    key += f":{dataset}:train"
    where = cache_dir or (None if run.read_only else run.workdir)
    cache = os.path.join(where, f"reference_features_{extractor.name}.npz") if where else ""
    ref = None
    if cache and os.path.exists(cache):
        with np.load(cache) as z:
            if str(z["key"]) == key:
                ref = z["features"]
    if ref is None:
        ref, _ = extractor(_images_array(run.config.data, "train").astype(np.float32) / 255.0)
        if cache and os.path.isdir(where):  # a run not yet started writes nothing
            np.savez(cache + ".tmp.npz", features=ref, key=key)
            os.replace(cache + ".tmp.npz", cache)
    return QualityReference(extractor, ref, held.astype(np.float32) / 255.0, net_path)


def image_quality(images_uint8: np.ndarray, reference: QualityReference, seed: int = 0,
                  labels=None) -> dict:  # fmt: skip
    """FID/KID of 8-bit samples (as saved) against the training features, with the floor of
    as many held-out images, and label histograms for classifier features; for samples of
    classes ``labels``, the fraction the classifier labels as asked (``class_accuracy``),
    beside its accuracy on the real test images (``classifier_test_accuracy``)."""

    x = np.asarray(images_uint8).astype(np.float32) / 255.0
    t0 = time.time()
    q = metrics.fid_kid_with_floor(
        x, None, reference.held_out, reference.extractor, seed=seed,
        reference_features=reference.features, labels=labels,
    )  # fmt: skip
    q["metric_seconds"] = time.time() - t0
    if reference.classifier_path:
        q["classifier"] = reference.classifier_path
        q["classifier_test_accuracy"] = classifiers.test_accuracy_of(reference.classifier_path)
    return q


def to_uint8(samples) -> np.ndarray:
    """Samples in [0, 1] as the 8-bit images that are saved and measured."""
    return np.round(np.clip(samples, 0, 1) * 255).astype(np.uint8)


def fid_monitor(cfg, workdir: str, data_shape, progress: bool = False) -> Monitor:
    """The training ``Monitor`` of ``cfg.evaluation.fid_every``: classifier (or Inception) FID
    and KID of ``fid_samples`` samples of the EMA model with the run's sampler (seed
    ``cfg.seed``), beside the floors of as many held-out test images, and the FID ratio.
    Loads the extractor and the reference features now, so a missing classifier fails before
    training."""

    ev = cfg.evaluation
    probe = Run(workdir, cfg, {}, 0)
    reference = quality_reference(
        probe, ev.fid_samples, ev.feature_extractor, ev.classifier, ev.inception_weights
    )
    models = {}  # one contract model per network (a new one would retrace the solver)

    def measure(ema_models, step):
        net = ema_models["score"]
        if id(net) not in models:
            models[id(net)] = score_model.score_model(cfg, net)
        out = generate_from(
            models[id(net)], cfg.noise.sigmas(), score_model.sample_space(cfg, data_shape),
            ev.fid_samples, cfg.seed, cfg.sampler, batch_size=ev.sample_batch_size,
            progress=progress,
        )  # fmt: skip
        q = image_quality(to_uint8(out.samples), reference, seed=cfg.seed)
        return {"fid/fid": q["fid"], "fid/floor": q["fid_floor"],
                "fid/ratio": q["fid"] / q["fid_floor"], "fid/num_evals": out.num_evals,
                "kid/kid": q["kid"], "kid/floor": q["kid_floor"]}  # fmt: skip

    return Monitor(ev.fid_every, measure)


# --- VAE likelihood --------------------------------------------------------------------------


def vae_test_images(run: Run, n: int) -> np.ndarray:
    """The first ``n`` test images in [0, 1] (training images for folder / npz data), with one
    fixed binarisation (the same for every model and seed) when the VAE binarises."""
    import tensorflow as tf

    split = "train" if run.config.data.dataset in ("folder", "npz") else "test"
    try:
        test, *_ = data.load_training_images(run.config.data, split=split)
    except data.DataUnavailableError as e:
        raise EvaluationError(str(e)) from e
    x = np.stack(list(test.take(n).as_numpy_iterator())).astype(np.float32) / 255.0
    if run.config.data.binarize:
        x = vae.binarize(x, tf.constant([0, 0xB1])).numpy()
    return x


def vae_likelihood(
    run: Run,
    x: np.ndarray,
    seed: int = 0,
    settings: EvalConfig | None = None,
    progress: bool = False,
) -> tuple[dict, dict]:
    """Test NLL by AIS for either encoder; IWAE and -ELBO for the Gaussian one, with the
    ``evaluation`` section's ``ais_chains``, ``ais_temperatures``, ``ais_leapfrog_steps``,
    ``eval_batch`` and ``iwae_samples`` (default: ``run.config.evaluation``). Returns
    (summary with mean and standard error, per-example values for paired comparisons)."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    ev, cfg, models = settings or run.config.evaluation, run.config, run.models
    latent_dim, eval_batch = cfg.network.latent_dim, ev.eval_batch
    ais = tf.function(
        lambda xb, s: likelihood.ais_log_likelihood(
            vae.decoder_log_likelihood_fn(models["decoder"]), xb, latent_dim, s,
            ais_chains=ev.ais_chains, ais_temperatures=ev.ais_temperatures,
            ais_leapfrog_steps=ev.ais_leapfrog_steps,
        )
    )  # fmt: skip
    starts = range(0, len(x), eval_batch)
    log_px, accept, iwae, elbo = [], [], [], []
    t0 = time.time()
    for i in tqdm(starts, desc="AIS", unit="batch", disable=not progress):
        res = ais(tf.constant(x[i : i + eval_batch]), tf.constant([seed, 100 + i]))
        log_px.append(res.log_likelihood.numpy())
        accept.append(float(res.accept_rate))
    per_example = {"ais_nll": -np.concatenate(log_px)}
    out = {"step": run.step, "encoder": cfg.network.vae_encoder, "latent_dim": latent_dim}
    out["n_examples"] = len(x)
    out["ais_nll"] = {
        **_mean_se(per_example["ais_nll"]), "chains": ev.ais_chains,
        "temperatures": ev.ais_temperatures, "leapfrog_steps": ev.ais_leapfrog_steps,
        "accept_rate": float(np.mean(accept)), "seconds": time.time() - t0,
    }  # fmt: skip
    if cfg.network.vae_encoder == "gaussian":
        for i in starts:
            xb, s = tf.constant(x[i : i + eval_batch]), tf.constant([seed, 200 + i])
            r = vae.iwae_bound(models["encoder"], models["decoder"], xb, ev.iwae_samples, s)
            iwae.append(r.iwae.numpy())
            elbo.append(r.elbo.numpy())
        per_example["iwae_nll"] = -np.concatenate(iwae)
        out["iwae_nll"] = {**_mean_se(per_example["iwae_nll"]), "samples": ev.iwae_samples}
        out["neg_elbo"] = _mean_se(-np.concatenate(elbo))
    return out, per_example


# --- likelihood of image score models ---------------------------------------------------------


def _gaussian_log_prob(y, mean, sigma: float):
    import tensorflow as tf

    d = tf.reshape(y - mean, [tf.shape(y)[0], -1])
    dim = tf.cast(tf.shape(d)[1], tf.float32)
    return -0.5 * tf.reduce_sum(tf.square(d), 1) / sigma**2 - 0.5 * dim * float(
        np.log(2 * np.pi * sigma**2)
    )


def bits_per_dim(
    run: Run,
    n: int = 1000,
    seed: int = 0,
    batch_size: int = 100,
    ode_tol: float = 1e-5,
    exact_trace: bool = False,
    progress: bool = False,
) -> tuple[dict, np.ndarray]:
    """Bits per dimension of the first ``n`` test images under a score model's probability
    flow ODE (``likelihood.ode_log_likelihood``, Dormand-Prince at rtol = atol = ``ode_tol``).

    Each 8-bit image k is dequantised as in training, x = (k + u) / 256 with u ~ U(0, 1)^D,
    and log p(x) is the density of p_sigma_min on [0, 1]^D, the ODE carried from sigma_min up
    to sigma_max with the prior N(data mean, sigma_max^2 I) there. On [0, 256)^D, v = 256 x,
    log p(v) = log p(x) - D ln 256, so bits/dim = -log p(v) / (D ln 2) = 8 - log p(x) / (D ln 2),
    an upper bound on the 8-bit model's bits (Jensen over u). The divergence is Hutchinson's
    (one Rademacher probe per image) unless ``exact_trace``: unbiased, and its noise is in
    the standard error. Batch b draws u and the probe from (seed, b). A class-conditional
    run's is log p(x | y) with y each test image's label.
    Returns (summary: mean, se, n, evaluations, seconds; per-image bits/dim)."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    if not run.config.is_image or run.family != "score":
        raise EvaluationError("bits_per_dim is for image score models")
    if n < 2 or batch_size < 1:
        raise EvaluationError(
            f"bits_per_dim needs n >= 2 and batch_size >= 1, got {n} and {batch_size}"
        )
    conditional = run.config.data.num_classes > 0
    k, labels = (_images_array(run.config.data, "test", True) if conditional
                 else (_images_array(run.config.data, "test"), None))  # fmt: skip
    if len(k) < n:
        raise EvaluationError(f"n={n} is more than the {len(k)} test images")
    sig = np.asarray(run.sigmas, np.float64)
    floor, model = np.float32(sig[-1]), run.model
    mean = tf.constant(np.asarray(run.space.data_mean or 0.0, np.float32))
    dim = int(np.prod(run.data_shape))

    @tf.function(reduce_retracing=True)
    def log_px(x, probe_seed, y=None):  # y: the images' labels, log p(x | y)
        view = model if y is None else model.conditioned(y)
        score = lambda x, sigma: view.score(x, tf.maximum(tf.cast(sigma, tf.float32), floor))
        return likelihood.ode_log_likelihood(
            score, x, float(sig[-1]), float(sig[0]),
            lambda y: _gaussian_log_prob(y, mean, float(sig[0])),
            seed=probe_seed, exact_trace=exact_trace, rtol=ode_tol, atol=ode_tol,
        )  # fmt: skip

    bpd, evals, t0 = [], [], time.time()
    for b, i in enumerate(tqdm(range(0, n, batch_size), desc="bits/dim", unit="batch",
                               disable=not progress)):  # fmt: skip
        u_seed, p_seed = sampling.batch_seeds(seed, b)
        pix = tf.constant(k[i : i + batch_size].astype(np.float32))
        x = (pix + tf.random.stateless_uniform(tf.shape(pix), u_seed, alg="philox")) / 256.0
        y = None if labels is None else tf.constant(labels[i : i + batch_size])
        lp, ne = log_px(x, p_seed, y)
        bpd.append(8.0 - lp.numpy() / (dim * np.log(2.0)))
        evals.append(int(ne))
    bpd = np.concatenate(bpd)
    summary = dict(
        _mean_se(bpd), n=n, dim=dim, sigma_min=float(sig[-1]), sigma_max=float(sig[0]),
        ode_tol=ode_tol, exact_trace=exact_trace, ode_fn_evaluations=float(np.mean(evals)),
        seconds=time.time() - t0, step=run.step, seed=seed, conditional=conditional,
    )  # fmt: skip
    return summary, bpd
