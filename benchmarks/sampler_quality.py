"""Sample quality against network evaluations: classifier FID/KID of each sampler on one
trained image model, collected into a JSON and a PNG plot of FID against evaluations. Runs
in process through the library (``api.generate``, ``evaluate.image_quality``): each model
and the reference features are loaded once.

    python benchmarks/sampler_quality.py --workdir=runs/mnist_cpu \\
        --classifier=runs/mnist_classifier --data_dir=DIR --num_samples=500 \\
        [--single_dsm_workdir=runs/mnist_single_dsm]

Writes runs/bench/sampler_quality.json (one row per setting: sampler, flags, evaluations,
FID, KID, the real-vs-real floor at the same n, label histogram, seconds) and
runs/bench/sampler_quality.png. The optional single-DSM model (flags/presets/
mnist_single_dsm_cpu.cfg) adds the NCSN paper's negative result: plain Langevin on a score
learned at one small sigma.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

WORKDIR = flags.DEFINE_string("workdir", "runs/mnist_cpu", "The trained NCSN image model.")
SINGLE = flags.DEFINE_string(
    "single_dsm_workdir", None, "A model from mnist_single_dsm_cpu.cfg (plain Langevin row)."
)
CLASSIFIER = flags.DEFINE_string("classifier", "runs/mnist_classifier", "Saved classifier.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir of the model's data set.")
NUM_SAMPLES = flags.DEFINE_integer("num_samples", 500, "Samples per setting (FID's n).")
BATCH = flags.DEFINE_integer("sample_batch_size", 250, "Chains run at once.")
OUT = flags.DEFINE_string("out", "runs/bench/sampler_quality.json", "Output JSON.")
ONLY = flags.DEFINE_list("only", [], "Run only these setting names (default: all).")
COMPARE = flags.DEFINE_string(
    "compare",
    None,
    "Another model's rows to draw beside these (grey; a JSON like --out's, e.g. "
    "docs/ncsn_cpu_sampler_quality.json, the NCSN CPU preset's).",
)
POSTHOC = flags.DEFINE_float(
    "posthoc_sigma_rel", 0.0, "Sample this post-hoc EMA width (a run trained with --posthoc_ema)."
)
CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Sample this checkpoint prefix of --workdir (default: the newest good one)."
)
SEED = flags.DEFINE_integer(
    "seed", 0, "Sampling seed of every setting (the floor does not change)."
)
REUSE = flags.DEFINE_boolean(
    "reuse", False, "Keep the rows whose per-setting JSON exists; run only the missing ones."
)

# name -> sampler options. The 1000-evaluation row is the NCSN paper's MNIST sampler
# (T = 100, eps = 2e-5); the others spend 10 to 200 evaluations on the same 10 levels.
SETTINGS = {
    "annealed_T20": dict(sampler="annealed_langevin", n_steps_each=20, step_lr=5e-5),
    "annealed_T10": dict(sampler="annealed_langevin", n_steps_each=10, step_lr=5e-5),
    "annealed_T9": dict(sampler="annealed_langevin", n_steps_each=9, step_lr=5e-5),
    "annealed_T5": dict(sampler="annealed_langevin", n_steps_each=5, step_lr=5e-5),
    "pc_c4": dict(sampler="predictor_corrector", n_corrector=4),
    "pc_c9": dict(sampler="predictor_corrector", n_corrector=9),
    "cas": dict(sampler="consistent_annealed"),
    "heun": dict(sampler="heun"),
    "ode_1e-3": dict(sampler="ode", ode_tol=1e-3),
    "annealed_T100": dict(sampler="annealed_langevin", n_steps_each=100, step_lr=2e-5),
}
# Continuous-noise (EDM) models, on their own 18-level karras grid: every fast sampler at
# 19-36 evaluations and the adaptive ODE. (Annealed Langevin is not one of them: with
# alpha_i = step_lr sigma_i^2 / sigma_L^2 and sigma_L = 0.002, no one step_lr suits
# sigma_1 = 17; T = 2 with step_lr 2e-5 gave FID 313.)
EDM_SETTINGS = {
    "heun": dict(sampler="heun"),
    "heun_10": dict(sampler="heun", heun_steps=10),
    "edm_churn10": dict(sampler="edm", s_churn=10.0),
    "pc_c1": dict(sampler="predictor_corrector", n_corrector=1),
    "cas": dict(sampler="consistent_annealed"),
    "ode_1e-3": dict(sampler="ode", ode_tol=1e-3),
    "edm_churn30": dict(sampler="edm", s_churn=30.0),
    "pc_c1_snr0.05": dict(sampler="predictor_corrector", n_corrector=1, snr=0.05),
    # the ancestral predictor ends each step at exactly the next level's noise (reverse
    # diffusion leaves too much on this grid's far-apart levels)
    "pc_anc_c1": dict(sampler="predictor_corrector", n_corrector=1, predictor="ancestral"),
    "pc_anc_c1_snr0.05": dict(
        sampler="predictor_corrector", n_corrector=1, snr=0.05, predictor="ancestral"
    ),
    "pc_anc_c0": dict(sampler="predictor_corrector", n_corrector=0, predictor="ancestral"),
    # a continuous model samples on any grid: CAS's one eta is set by the grid's largest
    # level ratio (0.64 on 18 levels, 0.41 on 35), so a finer grid wastes less of it
    "cas_35": dict(sampler="consistent_annealed", num_levels=35),
}
#: DPM-Solver++(2M) SDE with the heun form of its correction on 10 levels ending at 0.02
_HEUN_SDE_10 = dict(sampler="dpmpp_2m_sde", solver_type="heun", num_levels=10, sigma_min=0.02)
# The k-diffusion / diffusers solvers on a continuous model at 10-20 evaluations (the grid:
# num_levels karras sigmas of the run's ends; Heun and DPM2 take 2N - 1 on N levels), with
# stochastic EDM and Heun on the run's 18 levels (35) and the adaptive solvers as references.
EDM_FAST_SETTINGS = {
    "heun_6": dict(sampler="heun", heun_steps=6),
    "heun_10": dict(sampler="heun", heun_steps=10),
    "euler_10": dict(sampler="euler", num_levels=10),
    "euler_20": dict(sampler="euler", num_levels=20),
    "dpmpp_2m_10": dict(sampler="dpmpp_2m", num_levels=10),
    "dpmpp_2m_20": dict(sampler="dpmpp_2m", num_levels=20),
    "lms_10": dict(sampler="lms", num_levels=10),
    "lms_20": dict(sampler="lms", num_levels=20),
    "dpm2_6": dict(sampler="dpm2", num_levels=6),
    "dpm2_10": dict(sampler="dpm2", num_levels=10),
    "dpmpp_3m_sde_10": dict(sampler="dpmpp_3m_sde", num_levels=10),
    "dpmpp_3m_sde_20": dict(sampler="dpmpp_3m_sde", num_levels=20),
    "dpmpp_2m_sde_20": dict(sampler="dpmpp_2m_sde", num_levels=20),
    "euler_ancestral_20": dict(sampler="euler_ancestral", num_levels=20),
    "dpmpp_2s_ancestral_10": dict(sampler="dpmpp_2s_ancestral", num_levels=10),
    "dpm2_ancestral_10": dict(sampler="dpm2_ancestral", num_levels=10),
    # stochastic solvers at about 10 evaluations (the noise that helps at 20, item 5 of issue 27)
    "dpmpp_2m_sde_10": dict(sampler="dpmpp_2m_sde", num_levels=10),
    "dpmpp_2m_sde_10_eta0.5": dict(sampler="dpmpp_2m_sde", num_levels=10, sde_eta=0.5),
    "dpmpp_2m_sde_20_eta0.5": dict(sampler="dpmpp_2m_sde", num_levels=20, sde_eta=0.5),
    "dpmpp_2m_sde_20_eta0.75": dict(sampler="dpmpp_2m_sde", num_levels=20, sde_eta=0.75),
    "dpmpp_2m_sde_15": dict(sampler="dpmpp_2m_sde", num_levels=15),
    "euler_ancestral_10": dict(sampler="euler_ancestral", num_levels=10),
    "dpmpp_2s_ancestral_5": dict(sampler="dpmpp_2s_ancestral", num_levels=5),
    "edm_churn10_5": dict(sampler="edm", num_levels=5, s_churn=10.0),
    "edm_churn10_10": dict(sampler="edm", num_levels=10, s_churn=10.0),
    # binarized MNIST is decided well above sigma 0.002: a 10-level grid that ends at 0.02-0.05
    # spends its steps where the images form (the last step is the denoiser's, to 0)
    "dpmpp_2m_sde_10_smin0.02": dict(sampler="dpmpp_2m_sde", num_levels=10, sigma_min=0.02),
    "dpmpp_2m_sde_10_smin0.05": dict(sampler="dpmpp_2m_sde", num_levels=10, sigma_min=0.05),
    "dpmpp_2m_sde_10_eta0.5_smin0.02": dict(
        sampler="dpmpp_2m_sde", num_levels=10, sde_eta=0.5, sigma_min=0.02
    ),
    "dpmpp_2m_sde_10_eta0.75_smin0.02": dict(
        sampler="dpmpp_2m_sde", num_levels=10, sde_eta=0.75, sigma_min=0.02
    ),
    "dpmpp_2m_sde_10_smin0.02_rho5": dict(
        sampler="dpmpp_2m_sde", num_levels=10, sigma_min=0.02, rho=5.0
    ),
    "dpmpp_2m_sde_10_smin0.02_rho3": dict(
        sampler="dpmpp_2m_sde", num_levels=10, sigma_min=0.02, rho=3.0
    ),
    "dpmpp_2m_sde_15_smin0.02_rho5": dict(
        sampler="dpmpp_2m_sde", num_levels=15, sigma_min=0.02, rho=5.0
    ),
    "dpmpp_2m_sde_20_smin0.02_rho5": dict(
        sampler="dpmpp_2m_sde", num_levels=20, sigma_min=0.02, rho=5.0
    ),
    "dpmpp_3m_sde_10_smin0.02": dict(sampler="dpmpp_3m_sde", num_levels=10, sigma_min=0.02),
    "dpmpp_2m_10_smin0.02": dict(sampler="dpmpp_2m", num_levels=10, sigma_min=0.02),
    "dpmpp_2m_sde_20_smin0.02": dict(sampler="dpmpp_2m_sde", num_levels=20, sigma_min=0.02),
    # DPM2 ancestral, the best at 19 evaluations (2.10 over 3 seeds): at 9 and on other grids
    "dpm2_ancestral_5": dict(sampler="dpm2_ancestral", num_levels=5),
    "dpm2_ancestral_5_smin0.02_rho5": dict(
        sampler="dpm2_ancestral", num_levels=5, sigma_min=0.02, rho=5.0
    ),
    "dpm2_ancestral_10_smin0.02_rho5": dict(
        sampler="dpm2_ancestral", num_levels=10, sigma_min=0.02, rho=5.0
    ),
    "dpm2_ancestral_20": dict(sampler="dpm2_ancestral", num_levels=20),
    "dpmpp_2m_sde_10_smax10_smin0.02_rho5": dict(
        sampler="dpmpp_2m_sde", num_levels=10, sigma_max=10.0, sigma_min=0.02, rho=5.0
    ),
    "dpmpp_2m_sde_10_smin0.03_rho4": dict(
        sampler="dpmpp_2m_sde", num_levels=10, sigma_min=0.03, rho=4.0
    ),
    # the heun form of the 2M correction (k-diffusion's solver_type="heun")
    "dpmpp_2m_sde_heun_10_smin0.02_rho5": _HEUN_SDE_10 | dict(rho=5.0),
    "dpmpp_2m_sde_heun_20_smin0.02_rho5": dict(
        sampler="dpmpp_2m_sde", solver_type="heun", num_levels=20, sigma_min=0.02, rho=5.0
    ),
    # more Langevin noise per step than the reverse SDE's (sde_eta above 1)
    "dpmpp_2m_sde_10_smin0.02_rho5_eta1.5": dict(
        sampler="dpmpp_2m_sde", sde_eta=1.5, num_levels=10, sigma_min=0.02, rho=5.0
    ),
    "dpmpp_2m_sde_heun_10_smin0.02_rho5_eta1.5": _HEUN_SDE_10 | dict(sde_eta=1.5, rho=5.0),
    "dpmpp_2m_sde_heun_10_smin0.02_rho5_eta2": _HEUN_SDE_10 | dict(sde_eta=2.0, rho=5.0),
    # the best at 10 evaluations on mnist_edm_avx2_90.cfg (2.29 over 5 seeds, issue 27)
    "dpmpp_2m_sde_heun_10_smin0.02_rho4_eta1.5": _HEUN_SDE_10 | dict(sde_eta=1.5, rho=4.0),
    "heun": dict(sampler="heun"),
    "edm_churn10": dict(sampler="edm", s_churn=10.0),
    "dpm_adaptive": dict(sampler="dpm_adaptive"),
    "ode_1e-3": dict(sampler="ode", ode_tol=1e-3),
}
SETTINGS_SETS = {"ncsn": SETTINGS, "edm": EDM_SETTINGS, "edm_fast": EDM_FAST_SETTINGS}
SETTING_SET = flags.DEFINE_enum(
    "settings",
    "ncsn",
    list(SETTINGS_SETS),
    "Which sampler settings: ncsn (10 discrete levels), edm (a continuous model's 18-level "
    "karras grid) or edm_fast (the k-diffusion solvers at 10-20 evaluations).",
)
#: options that set the sampling grid of a continuous model (its noise section), not the solver
GRID_KEYS = ("num_levels", "sigma_min", "sigma_max", "rho")
SINGLE_SETTING = dict(sampler="langevin", langevin_steps=1000, langevin_step_size=2e-5)


def _run(name: str, run, reference, options: dict, out_dir: str) -> dict:
    """One setting: generate, score against the reference, write its JSON (or reuse it)."""
    from tf_score import api, sampling
    from tf_score.families import evaluate

    path = os.path.join(out_dir, f"{name}.json")
    if REUSE.value and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    print(f"{name}: {options}", flush=True)
    t0 = time.time()
    options = dict(options)
    grid = {k: options.pop(k) for k in GRID_KEYS if k in options}  # a continuous model's grid
    if grid:
        run = dataclasses.replace(run, config=run.config.replace(noise=grid))
    if "denoise" in sampling.get(options["sampler"]).option_names():
        options = {"denoise": True, **options}  # every sampler that has it ends with Tweedie
    out = api.generate(run, NUM_SAMPLES.value, seed=SEED.value, batch_size=BATCH.value,
                       progress=True, **options)  # fmt: skip
    row = evaluate.image_quality(evaluate.to_uint8(out.samples), reference, seed=0)
    options.update(grid)
    row.update(
        name=name, options=options, seed=SEED.value, num_evals=out.num_evals,
        sample_seconds=out.seconds, wall_seconds=time.time() - t0, workdir=run.workdir,
        checkpoint_step=run.step,
    )  # fmt: skip
    with open(path, "w") as f:
        json.dump(row, f, indent=2)
    return row


def _setting_rows(workdir: str, settings: dict, out_dir: str) -> list[dict]:
    from tf_score import api
    from tf_score.families import evaluate

    wanted = {k: v for k, v in settings.items() if not ONLY.value or k in ONLY.value}
    if not wanted:
        return []
    run = api.load(
        workdir, CHECKPOINT.value, data_dir=DATA_DIR.value, posthoc_sigma_rel=POSTHOC.value
    )
    reference = evaluate.quality_reference(run, NUM_SAMPLES.value, classifier=CLASSIFIER.value)
    return [_run(name, run, reference, opts, out_dir) for name, opts in wanted.items()]


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib.pyplot as plt

    from tf_score.evaluation import plotting  # noqa: F401  (selects the headless backend)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if COMPARE.value:
        with open(COMPARE.value) as f:
            other = json.load(f)
        xs, ys = zip(*[(r["num_evals"], r["fid"]) for r in other["rows"]], strict=True)
        ax.scatter(xs, ys, color="gray", marker="s", s=20, label=other.get("label", COMPARE.value))
        for r in other["rows"]:
            ax.annotate(r["name"], (r["num_evals"], r["fid"]), fontsize=6, color="gray",
                        xytext=(4, -8), textcoords="offset points")  # fmt: skip
    for i, r in enumerate(rows):
        single = r["workdir"] == SINGLE.value
        label = WORKDIR.value if i == 0 else None
        ax.scatter(r["num_evals"], r["fid"], color="tab:red" if single else "tab:blue", s=24,
                   label=label)  # fmt: skip
        ax.annotate(r["name"], (r["num_evals"], r["fid"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")  # fmt: skip
    floor = rows[0]["fid_floor"]
    ax.axhline(floor, color="gray", ls="--", lw=1, label=f"real test images ({floor:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per sample")
    ax.set_ylabel(f"classifier FID (n = {rows[0]['n']})")
    ax.set_title(f"MNIST, {WORKDIR.value}: sample quality against evaluations", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    out_dir = os.path.splitext(OUT.value)[0]
    os.makedirs(out_dir, exist_ok=True)
    rows = _setting_rows(WORKDIR.value, SETTINGS_SETS[SETTING_SET.value], out_dir)
    if SINGLE.value:
        rows += _setting_rows(SINGLE.value, {"single_dsm_langevin": SINGLE_SETTING}, out_dir)
    with open(OUT.value, "w") as f:
        json.dump({"num_samples": NUM_SAMPLES.value, "rows": rows}, f, indent=2)
    _plot(rows, os.path.splitext(OUT.value)[0] + ".png")
    print(f"\n{'setting':<22}{'evals':>7}{'FID':>9}{'KID':>10}{'seconds':>9}")
    for r in rows:
        print(
            f"{r['name']:<22}{r['num_evals']:>7}{r['fid']:>9.3f}{r['kid']:>10.5f}"
            f"{r['sample_seconds']:>9.1f}"
        )
    print(f"floor (real test images, n = {rows[0]['n']}): FID {rows[0]['fid_floor']:.3f}")
    print(f"wrote {OUT.value} and {os.path.splitext(OUT.value)[0]}.png")


if __name__ == "__main__":
    app.run(main)
