"""Sample a trained score model, plot, and evaluate.

    python run_sample.py --workdir=runs/toy_mixture                 # samples.npz + samples.png
    python run_sample.py --flagfile=flags/presets/toy_mixture.cfg --workdir=runs/toy_mixture \
        --evaluate                                                   # the two-mode comparison

    python run_sample.py --workdir=runs/mnist_vae_ssm --evaluate      # VAE: AIS test NLL

The model is rebuilt from workdir/config.json and the EMA weights of the latest checkpoint.
For a VAE run it writes prior samples and reconstructions, and with --evaluate the test
negative log-likelihood by AIS (and, for the Gaussian encoder, the IWAE bound and the ELBO).
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np
from absl import app

import flags.definitions as F


def _load(workdir: str):
    from tf_score import score_model, train

    cfg = _read_config(workdir)
    import keras

    keras.mixed_precision.set_global_policy(cfg.get("precision", "float32"))
    sigmas = score_model.sigmas_from_config(cfg)
    model_fn = score_model.model_fn_from_config(cfg, tuple(cfg.get("data_shape", (2,))))
    try:
        models, step = train.load_ema_models(
            {"score": model_fn}, os.path.join(workdir, "checkpoints"), F.CHECKPOINT.value
        )
    except FileNotFoundError as e:
        raise app.UsageError(str(e)) from e
    return cfg, sigmas, models["score"], step


def _at_level(model, level: int):
    """Unconditional score x -> s(x, level) from a noise-conditional network."""
    import tensorflow as tf

    return lambda x: model(x, tf.fill([tf.shape(x)[0]], level))


_INTERPOLATED: dict = {}


def _interpolated(model, sigmas):
    """One continuous-sigma score per model (a new closure per call would retrace the ODE)."""
    from tf_score import samplers

    key = (id(model), tuple(float(v) for v in sigmas))
    if key not in _INTERPOLATED:
        _INTERPOLATED[key] = samplers.interpolated_score(model, sigmas)
    return _INTERPOLATED[key]


def _run_sampler(model, sigmas, x0, seed, snapshots=False):
    """The sampler chosen by --sampler, with the sampling flags."""
    from tf_score import samplers

    name = F.SAMPLER.value
    if name in ("consistent_annealed", "predictor_corrector", "heun", "ode"):
        # These start from the data perturbed to the first level: x0 (data-like) + sigma_1 z.
        import numpy as np
        import tensorflow as tf

        z_seed = tf.random.experimental.stateless_fold_in(seed, -3, alg="philox")
        x0 = x0 + float(sigmas[0]) * tf.random.stateless_normal(tf.shape(x0), z_seed, alg="philox")
    if name == "ode":
        return samplers.probability_flow_ode(
            _interpolated(model, sigmas),
            x0,
            float(sigmas[0]),
            float(sigmas[-1]),
            rtol=F.ODE_TOL.value,
            atol=F.ODE_TOL.value,
            denoise=F.DENOISE.value,
            jit_compile=F.JIT.value,
        )
    if name in ("consistent_annealed", "predictor_corrector", "heun"):
        if name == "consistent_annealed":
            sig = np.asarray(sigmas, np.float64)
            eta = F.CAS_ETA.value or float(np.max(1.0 - sig[1:] / sig[:-1]))
            try:
                return samplers.consistent_annealed(
                    model,
                    x0,
                    sigmas,
                    eta * sig[-1] ** 2,
                    seed,
                    denoise=F.DENOISE.value,
                    jit_compile=F.JIT.value,
                )
            except ValueError as e:
                raise app.UsageError(
                    f"--cas_eta={eta:g} is too small for this schedule ({e}; divide by "
                    f"sigma_L^2 = {sig[-1] ** 2:g} for eta), or pass --cas_eta=0"
                ) from e
        if name == "predictor_corrector":
            return samplers.predictor_corrector(
                model,
                x0,
                sigmas,
                seed,
                snr=F.SNR.value,
                n_corrector=F.N_CORRECTOR.value,
                denoise=F.DENOISE.value,
                jit_compile=F.JIT.value,
            )
        return samplers.heun(
            model, x0, sigmas, num_steps=F.HEUN_STEPS.value or None, jit_compile=F.JIT.value
        )
    if name == "langevin":
        return samplers.langevin(
            _at_level(model, len(sigmas) - 1),
            x0,
            F.LANGEVIN_STEP_SIZE.value,
            F.LANGEVIN_STEPS.value,
            seed,
            jit_compile=F.JIT.value,
        )
    return samplers.annealed_langevin(
        model,
        x0,
        sigmas,
        F.STEP_LR.value,
        F.N_STEPS_EACH.value,
        seed,
        denoise=F.DENOISE.value,
        snapshots=snapshots,
        jit_compile=F.JIT.value,
    )


def evaluate_two_mode(workdir, cfg, sigmas, model, step) -> dict:
    """Plain vs annealed Langevin, learned vs exact score; metrics.json and samples.png."""
    import tensorflow as tf

    from tf_score import data, metrics, plotting, samplers

    toy = data.get_toy(cfg["dataset"])
    n, repeats, seed = F.NUM_SAMPLES.value, F.EVAL_REPEATS.value, F.SEED.value
    last = len(sigmas) - 1
    # Score functions are made once: a new Python callable per call would retrace the sampler.
    exact_cond = toy.conditional_score_fn(sigmas)
    exact_score = toy.score_fn()
    learned_last = _at_level(model, last)
    plain = functools.partial(
        samplers.langevin,
        step_size=F.LANGEVIN_STEP_SIZE.value,
        n_steps=F.LANGEVIN_STEPS.value,
        jit_compile=F.JIT.value,
    )
    annealed = functools.partial(
        samplers.annealed_langevin,
        sigmas=sigmas,
        eps=F.STEP_LR.value,
        n_steps_each=F.N_STEPS_EACH.value,
        denoise=F.DENOISE.value,
        jit_compile=F.JIT.value,
    )
    score_fns = {
        "plain_langevin": (plain, learned_last),
        "exact_plain_langevin": (plain, exact_score),
        "annealed_langevin": (annealed, model),
        "exact_annealed_langevin": (annealed, exact_cond),
    }
    runs = {
        name: (lambda x0, s, run=run, fn=fn: run(fn, x0, seed=s))
        for name, (run, fn) in score_fns.items()
    }
    samples = {k: [] for k in runs}
    seconds = {k: 0.0 for k in runs}
    for r in range(repeats):
        x0 = samplers.uniform_init([n, 2], tf.constant([seed, 2 * r]), -toy.extent, toy.extent)
        chain_seed = tf.constant([seed, 2 * r + 1])
        for name, run in runs.items():
            t0 = time.time()
            samples[name].append(run(x0, chain_seed).samples.numpy())
            seconds[name] += time.time() - t0
    exact = toy.sample(n, seed=tf.constant([seed, 99991])).numpy()
    exact_ref = toy.sample(n, seed=tf.constant([seed, 99992])).numpy()

    out = {"num_samples_per_batch": n, "num_batches": repeats, "checkpoint_step": step}
    for name, xs in samples.items():
        pooled = np.concatenate(xs)
        w, se = metrics.mode_weight(pooled)
        out[f"{name}_mode_weight"] = w
        out[f"{name}_mode_weight_se"] = se
        out[f"{name}_mmd"] = metrics.mmd_rbf(xs[0], exact)
        # p-value of the kernel two-sample test of "these samples come from the mixture"
        out[f"{name}_two_sample_p"] = metrics.kernel_two_sample_test(
            xs[0], exact, num_permutations=F.NUM_PERMUTATIONS.value, seed=seed
        )[1]
    out["exact_samples_mode_weight"] = metrics.mode_weight(exact)[0]
    out["exact_vs_exact_mmd"] = metrics.mmd_rbf(exact_ref, exact)
    out["sample_seconds"] = seconds["plain_langevin"] + seconds["annealed_langevin"]
    summary_path = os.path.join(workdir, "train_summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            out["train_seconds"] = json.load(f)["train_seconds"]
    out["train_loss"] = cfg["loss"]

    titles = {
        "plain_langevin": "plain Langevin, learned s",
        "exact_annealed_langevin": "annealed Langevin, exact s",
        "annealed_langevin": "annealed Langevin, learned s",
    }
    panels = {"exact samples": exact}
    for key, title in titles.items():
        panels[f"{title} (w={out[key + '_mode_weight']:.2f})"] = samples[key][0]
    plotting.scatter_panels(panels, toy.extent, path=os.path.join(workdir, "samples.png"))
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(out, f, indent=2)
    return out


def print_table(m: dict) -> None:
    n = m["num_samples_per_batch"] * m["num_batches"]
    print(
        f"\nmode weight = fraction with x1 + x2 > 0 (target 0.80), n = {n} "
        f"({m['num_batches']} x {m['num_samples_per_batch']}); MMD^2 vs exact samples, "
        f"n = {m['num_samples_per_batch']} (exact vs exact: {m['exact_vs_exact_mmd']:.4f}); "
        f"p: kernel two-sample test against exact samples ({F.NUM_PERMUTATIONS.value} "
        "permutations)"
    )
    print(f"{'sampler':<28}{'score':<9}{'mode weight':>18}{'MMD^2':>10}{'p':>8}")
    rows = [
        ("plain Langevin", "learned", "plain_langevin"),
        ("plain Langevin", "exact", "exact_plain_langevin"),
        ("annealed Langevin", "learned", "annealed_langevin"),
        ("annealed Langevin", "exact", "exact_annealed_langevin"),
    ]
    for label, score, key in rows:
        w, se = m[f"{key}_mode_weight"], m[f"{key}_mode_weight_se"]
        p = m.get(f"{key}_two_sample_p", float("nan"))
        print(f"{label:<28}{score:<9}{w:>11.3f} ± {se:.3f}{m[f'{key}_mmd']:>10.4f}{p:>8.3f}")
    if "train_seconds" in m:
        print(
            f"train {m['train_seconds']:.1f} s ({m['train_loss']}), "
            f"sample {m['sample_seconds']:.1f} s (learned score)"
        )


def _sample_images(workdir, cfg, sigmas, model, step) -> None:
    """Sample an image model: PNG grid + npz; optionally level snapshots and inpainting."""
    import tensorflow as tf

    from tf_score import plotting, samplers, score_model

    shape = tuple(cfg["data_shape"])
    n, seed = F.NUM_SAMPLES.value, tf.constant([F.SEED.value, 1])
    t0 = time.time()
    if F.INPAINT.value:
        images, _, _, _ = score_model.load_training_images(cfg, split="test")
        x_obs = tf.cast(next(iter(images.batch(n))), tf.float32) / 255.0
        w = shape[1]
        mask = tf.concat(
            [tf.ones([*shape[:1], w // 2, shape[2]]), tf.zeros([*shape[:1], w - w // 2, shape[2]])],
            axis=1,
        )
        out = samplers.annealed_langevin_inpaint(
            model,
            x_obs,
            mask,
            sigmas,
            F.STEP_LR.value,
            F.N_STEPS_EACH.value,
            seed,
            denoise=F.DENOISE.value,
            jit_compile=F.JIT.value,
        )
        occluded = x_obs * mask + 0.5 * (1 - mask)
        rows = [
            plotting.image_grid(a, ncols=min(n, 16))
            for a in (occluded.numpy(), out.samples.numpy(), x_obs.numpy())
        ]
        gap = np.full((4, rows[0].shape[1], rows[0].shape[2]), 255, np.uint8)
        plotting.save_png(
            np.concatenate([rows[0], gap, rows[1], gap, rows[2]]),
            os.path.join(workdir, "inpaint.png"),
            scale=2,
        )
        np.savez(
            os.path.join(workdir, "inpaint.npz"),
            observed=x_obs.numpy(),
            mask=mask.numpy(),
            samples=out.samples.numpy(),
        )
        print(
            f"inpainted {n} test images in {time.time() - t0:.1f} s "
            f"({int(out.num_evals)} evaluations each): {workdir}/inpaint.png "
            "(rows: occluded, samples, original)"
        )
        return
    quality = _quality_setup(cfg, n)  # checks and loads everything first
    t0 = time.time()
    out, x = _sample_in_batches(model, sigmas, shape, n)
    seconds = time.time() - t0
    images = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    plotting.save_png(plotting.image_grid(x[:100]), os.path.join(workdir, "samples.png"), scale=2)
    np.savez(os.path.join(workdir, "samples.npz"), samples=x, images=images)
    if out.snapshots is not None:
        snaps = out.snapshots.numpy()  # [L + 1, N, H, W, C]
        k = min(8, n)
        strip = snaps[:, :k].transpose(1, 0, 2, 3, 4).reshape(-1, *shape)
        plotting.save_png(
            plotting.image_grid(strip, ncols=len(snaps)),
            os.path.join(workdir, "snapshots.png"),
            scale=2,
        )
        plotting.save_gif(
            [plotting.image_grid(f) for f in snaps], os.path.join(workdir, "snapshots.gif"), scale=2
        )
    print(
        f"{F.SAMPLER.value}: {n} samples, {int(out.num_evals)} evaluations each, "
        f"{seconds:.1f} s ({n * int(out.num_evals) / seconds:.0f} evaluations/s), "
        f"checkpoint step {step} -> {workdir}/samples.png, samples.npz"
        + (", snapshots.png, snapshots.gif" if out.snapshots is not None else "")
    )
    if quality is not None:
        _report_quality(workdir, quality, images, int(out.num_evals), seconds, step)


def _sample_in_batches(model, sigmas, shape, n):
    """--num_samples chains, --sample_batch_size at a time (one batch keeps the seeds of a
    single call: x0 from (seed, 0), the chain from (seed, 1); the batch starting at chain i
    folds i into both). Returns (output of the first batch with ``num_evals`` the mean per
    sample over all batches, samples): the adaptive ODE's step control is per batch, so
    its count differs between batches and depends on the batch size."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    from tf_score import samplers

    bs = F.SAMPLE_BATCH_SIZE.value or n
    starts = range(0, n, bs)
    xs, evals = [], 0.0
    for i in tqdm(starts, desc=F.SAMPLER.value, unit="batch", disable=len(starts) < 2):
        init_seed, chain_seed = tf.constant([F.SEED.value, 0]), tf.constant([F.SEED.value, 1])
        if i:
            fold = tf.random.experimental.stateless_fold_in
            init_seed, chain_seed = fold(init_seed, i, "philox"), fold(chain_seed, i, "philox")
        x0 = samplers.uniform_init([min(bs, n - i), *shape], init_seed)
        out = _run_sampler(model, sigmas, x0, chain_seed, snapshots=F.SNAPSHOTS.value and not i)
        xs.append(out.samples.numpy())
        evals += float(out.num_evals) * len(xs[-1])
        if i == 0:
            first = out
    return first._replace(num_evals=round(evals / n)), np.concatenate(xs)


def _images_array(cfg, split):
    from tf_score import score_model

    images, *_ = score_model.load_training_images(cfg, split=split)
    return np.concatenate(list(images.batch(4096).as_numpy_iterator()))


def _quality_setup(cfg, n):
    """For --metrics: the feature extractor, the training set's features (cached in the
    workdir) and the held-out images of the floor; every error before any sampling."""
    if not F.METRICS.value:
        return None
    from tf_score import classifier, data, metrics

    if F.FEATURE_EXTRACTOR.value == "classifier":
        if not F.CLASSIFIER.value:
            raise app.UsageError(
                "--metrics with --feature_extractor=classifier needs --classifier=PATH (train "
                "it: run_train.py --flagfile=flags/presets/mnist_classifier.cfg "
                "--workdir=runs/mnist_classifier), or use --feature_extractor=inception"
            )
        try:
            net = classifier.load_classifier(F.CLASSIFIER.value)
        except (FileNotFoundError, ValueError) as e:
            raise app.UsageError(f"--classifier={F.CLASSIFIER.value}: {e}") from e
        if tuple(net.image_shape) != tuple(cfg["data_shape"]):
            raise app.UsageError(
                f"--classifier={F.CLASSIFIER.value} takes images {net.image_shape}, but this "
                f"model makes {tuple(cfg['data_shape'])}"
            )
        extractor = metrics.classifier_extractor(net)
        path = net_path = os.path.realpath(
            os.path.join(F.CLASSIFIER.value, classifier.CLASSIFIER_FILE)
            if os.path.isdir(F.CLASSIFIER.value)
            else F.CLASSIFIER.value
        )
        key = f"classifier:{path}:{os.path.getmtime(path)}"
    else:
        try:
            extractor = metrics.inception_extractor(F.INCEPTION_WEIGHTS.value)
        except metrics.MetricUnavailableError as e:
            raise app.UsageError(str(e)) from e
        net_path, key = None, f"inception:{F.INCEPTION_WEIGHTS.value}"
    if cfg["dataset"] in ("folder", "npz"):
        raise app.UsageError(
            f"--metrics needs a tfds data set with train and test splits, not --dataset="
            f"{cfg['dataset']}"
        )
    try:
        held = _images_array(cfg, "test")
    except data.DataUnavailableError as e:
        raise app.UsageError(str(e)) from e
    if len(held) < n:
        raise app.UsageError(
            f"--num_samples={n} is more than the {len(held)} test images of the floor"
        )
    key += f":{cfg['dataset']}:train"
    cache = os.path.join(F.WORKDIR.value, f"reference_features_{extractor.name}.npz")
    ref = None
    if os.path.exists(cache):
        with np.load(cache) as z:
            if str(z["key"]) == key:
                ref = z["features"]
    if ref is None:
        t0 = time.time()
        ref, _ = extractor(_images_array(cfg, "train").astype(np.float32) / 255.0)
        np.savez(cache + ".tmp.npz", features=ref, key=key)
        os.replace(cache + ".tmp.npz", cache)
        print(f"features of {len(ref)} training images in {time.time() - t0:.1f} s -> {cache}")
    return extractor, ref, held.astype(np.float32) / 255.0, net_path


def _report_quality(workdir, quality, images, num_evals, seconds, step) -> dict:
    """FID/KID of the (8-bit, as saved) samples, printed and written as JSON."""
    from tf_score import classifier, metrics

    extractor, ref, held, net_path = quality
    x = images.astype(np.float32) / 255.0
    t0 = time.time()
    q = metrics.image_quality(x, None, held, extractor, seed=F.SEED.value, reference_features=ref)
    q.update(
        sampler=F.SAMPLER.value,
        num_evals=num_evals,
        sample_seconds=seconds,
        metric_seconds=time.time() - t0,
        checkpoint_step=step,
        denoise=F.DENOISE.value,
        seed=F.SEED.value,
    )
    if net_path:
        q["classifier"] = net_path
        q["classifier_test_accuracy"] = classifier.test_accuracy_of(net_path)
    path = F.METRICS_FILE.value or os.path.join(workdir, f"quality_{F.SAMPLER.value}.json")
    from tf_score.train import write_json_atomic

    write_json_atomic(path, q)
    print(
        f"FID {q['fid']:.3f} (real test images: {q['fid_floor']:.3f}), KID "
        f"{q['kid']:.5f} ± {q['kid_std']:.5f} (real: {q['kid_floor']:.5f}); n = {q['n']} "
        f"samples vs {q['n_reference']} training images, {q['feature_extractor']} features"
    )
    if "label_histogram" in q:
        fmt = " ".join
        print("labels, samples: " + fmt(f"{i}:{p:.3f}" for i, p in enumerate(q["label_histogram"])))
        print(
            "labels, test:    "
            + fmt(f"{i}:{p:.3f}" for i, p in enumerate(q["label_histogram_floor"]))
        )
    print(f"wrote {path}")
    return q


def _read_config(workdir: str) -> dict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise app.UsageError(f"--workdir={workdir} has no config.json: train there first")
    with open(path) as f:
        cfg = json.load(f)
    if F.DATA_DIR.value:  # the data may have moved since training
        cfg["data_dir"] = F.DATA_DIR.value
    return cfg


def _mean_se(values) -> dict:
    v = np.asarray(values, np.float64)
    return {
        "mean": float(v.mean()),
        "se": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0,
    }


def evaluate_vae(workdir: str, cfg: dict, vcfg, models: dict, x: np.ndarray, step: int) -> dict:
    """Test NLL by AIS for either encoder; IWAE and ELBO for the Gaussian one. metrics.json."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    from tf_score import vae

    seed = F.SEED.value
    ais = tf.function(
        lambda xb, s: vae.ais_log_likelihood(
            vae.decoder_log_likelihood_fn(models["decoder"]),
            xb,
            vcfg.latent_dim,
            s,
            num_chains=F.AIS_CHAINS.value,
            num_temperatures=F.AIS_TEMPERATURES.value,
            num_leapfrog_steps=F.AIS_LEAPFROG_STEPS.value,
        )
    )
    bs = F.EVAL_BATCH.value
    log_px, accept, iwae, elbo = [], [], [], []
    t0 = time.time()
    for i in tqdm(range(0, len(x), bs), desc="AIS", unit="batch", disable=not F.PROGRESS.value):
        xb = tf.constant(x[i : i + bs])
        res = ais(xb, tf.constant([seed, 100 + i]))
        log_px.append(res.log_likelihood.numpy())
        accept.append(float(res.accept_rate))
    ais_seconds = time.time() - t0
    out = {
        "step": step,
        "encoder": vcfg.encoder,
        "latent_dim": vcfg.latent_dim,
        "n_examples": len(x),
        "ais_nll": {
            **_mean_se(-np.concatenate(log_px)),
            "chains": F.AIS_CHAINS.value,
            "temperatures": F.AIS_TEMPERATURES.value,
            "leapfrog_steps": F.AIS_LEAPFROG_STEPS.value,
            "accept_rate": float(np.mean(accept)),
            "seconds": ais_seconds,
        },
    }
    if vcfg.encoder == "gaussian":
        for i in range(0, len(x), bs):
            r = vae.iwae_bound(
                models["encoder"],
                models["decoder"],
                tf.constant(x[i : i + bs]),
                F.IWAE_SAMPLES.value,
                tf.constant([seed, 200 + i]),
            )
            iwae.append(r.iwae.numpy())
            elbo.append(r.elbo.numpy())
        out["iwae_nll"] = {**_mean_se(-np.concatenate(iwae)), "samples": F.IWAE_SAMPLES.value}
        out["neg_elbo"] = _mean_se(-np.concatenate(elbo))
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(out, f, indent=2)
    # Per-example values: two models evaluated on the same images compare pairwise.
    per_example = {"ais_nll": -np.concatenate(log_px)}
    if iwae:
        per_example["iwae_nll"] = -np.concatenate(iwae)
    np.savez(os.path.join(workdir, "nll_per_example.npz"), **per_example)
    return out


def print_vae_table(m: dict) -> None:
    a = m["ais_nll"]
    print(
        f"{m['encoder']} VAE (latent {m['latent_dim']}, step {m['step']}), "
        f"{m['n_examples']} binarised test images:"
    )
    print(
        f"  AIS NLL   {a['mean']:8.2f} ± {a['se']:.2f} nats  ({a['chains']} chains, "
        f"{a['temperatures']} temperatures, HMC {a['leapfrog_steps']} leapfrog, "
        f"acceptance {a['accept_rate']:.2f}, {a['seconds']:.0f} s)"
    )
    if "iwae_nll" in m:
        i, e = m["iwae_nll"], m["neg_elbo"]
        print(f"  IWAE NLL  {i['mean']:8.2f} ± {i['se']:.2f} nats  (K = {i['samples']})")
        print(f"  -ELBO     {e['mean']:8.2f} ± {e['se']:.2f} nats")


def _vae_main(workdir: str, cfg: dict) -> None:
    import tensorflow as tf

    from tf_score import data, plotting, score_model, train, vae

    vcfg = vae.config_from_experiment(cfg, cfg["data_shape"])
    try:
        models, step = train.load_ema_models(
            vae.model_fns(vcfg), os.path.join(workdir, "checkpoints"), F.CHECKPOINT.value
        )
    except FileNotFoundError as e:
        raise app.UsageError(str(e)) from e
    seed = F.SEED.value
    prior_x = vae.prior_samples(vcfg, models["decoder"], F.NUM_SAMPLES.value, [seed, 0]).numpy()
    plotting.save_png(plotting.image_grid(prior_x), os.path.join(workdir, "prior_samples.png"), 2)
    # folder / npz data have no test split: their own images are used
    split = "train" if cfg["dataset"] in ("folder", "npz") else "test"
    try:
        test, *_ = score_model.load_training_images(cfg, split=split)
    except data.DataUnavailableError as e:
        raise app.UsageError(str(e)) from e
    n_eval = F.EVAL_EXAMPLES.value if F.EVALUATE.value else 32
    x = np.stack(list(test.take(max(n_eval, 32)).as_numpy_iterator())).astype(np.float32) / 255.0
    # One fixed binarisation of the test images, the same for every model and seed.
    x = vae.binarize(x, tf.constant([0, 0xB1])).numpy() if vcfg.binarize else x
    rec = vae.reconstructions(vcfg, models, x[:32], tf.constant([seed, 1])).numpy()
    pairs = np.concatenate([x[:32], rec], axis=2)
    plotting.save_png(
        plotting.image_grid(pairs, ncols=4), os.path.join(workdir, "reconstructions.png"), 2
    )
    print(f"wrote {workdir}/prior_samples.png and reconstructions.png (data | reconstruction)")
    if F.EVALUATE.value:
        m = evaluate_vae(workdir, cfg, vcfg, models, x[:n_eval], step)
        print_vae_table(m)
        print(f"wrote {os.path.join(workdir, 'metrics.json')}")


def _export(workdir: str) -> None:
    """SavedModel of the latest (or --checkpoint) EMA weights for TF Serving."""
    from tf_score import train

    cfg = _read_config(workdir)
    if cfg.get("model") == "vae":
        from tf_score import vae

        model_fns = vae.model_fns(vae.config_from_experiment(cfg, cfg["data_shape"]))
    else:
        import keras

        from tf_score import score_model

        keras.mixed_precision.set_global_policy(cfg.get("precision", "float32"))
        shape = tuple(cfg.get("data_shape", (2,)))
        model_fns = {"score": score_model.model_fn_from_config(cfg, shape)}
    try:
        models, step = train.load_ema_models(
            model_fns, os.path.join(workdir, "checkpoints"), F.CHECKPOINT.value
        )
    except FileNotFoundError as e:
        raise app.UsageError(str(e)) from e
    path = F.export_run(cfg, models, step)
    print(f"exported step {step} for TF Serving: {path}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = F.WORKDIR.value
    if F.EXPORT_DIR.value:
        _export(workdir)
        return
    if _read_config(workdir).get("model") == "vae":
        _vae_main(workdir, _read_config(workdir))
        return
    is_image = len(_read_config(workdir).get("data_shape", (2,))) == 3
    if F.METRICS.value and (not is_image or F.INPAINT.value):
        raise app.UsageError(
            "--metrics is for sampling image models (not with --inpaint); the 2-D toys report "
            "mode weights, MMD and a two-sample test with --evaluate"
        )
    cfg, sigmas, model, step = _load(workdir)
    if is_image:
        _sample_images(workdir, cfg, sigmas, model, step)
        return
    if F.EVALUATE.value:
        m = evaluate_two_mode(workdir, cfg, sigmas, model, step)
        print_table(m)
        print(
            f"wrote {os.path.join(workdir, 'metrics.json')} and "
            f"{os.path.join(workdir, 'samples.png')}"
        )
        return

    import tensorflow as tf

    from tf_score import data, plotting, samplers

    toy = data.get_toy(cfg["dataset"])
    x0 = samplers.uniform_init(
        [F.NUM_SAMPLES.value, 2], tf.constant([F.SEED.value, 0]), -toy.extent, toy.extent
    )
    seed = tf.constant([F.SEED.value, 1])
    out = _run_sampler(model, sigmas, x0, seed)
    x = out.samples.numpy()
    np.savez(os.path.join(workdir, "samples.npz"), samples=x)
    plotting.scatter_panels(
        {f"{F.SAMPLER.value} ({int(out.num_evals)} evaluations)": x},
        toy.extent,
        path=os.path.join(workdir, "samples.png"),
    )
    print(f"wrote {len(x)} samples to {workdir}/samples.npz and samples.png")


if __name__ == "__main__":
    from absl import flags

    flags.mark_flag_as_required("workdir")
    app.run(main)
