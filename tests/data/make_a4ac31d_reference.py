"""Record the a4ac31d reference of tests/test_a4ac31d.py: two small toy workdirs (NCSN MLP,
EDM MLP), their exports, and every sampler's samples and evaluation counts with fixed seeds.
Runs only against the library of commit a4ac31d (its API):

    git archive a4ac31d | tar -x -C /tmp/base
    cd /tmp/base && python /path/to/tests/data/make_a4ac31d_reference.py OUT
"""

import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.getcwd())  # the a4ac31d checkout
from tf_score import config, runs, samplers

OUT = sys.argv[1]
COMMON = dict(
    dataset="two_mode",
    hidden_units=(32, 32),
    num_steps=300,
    batch_size=64,
    log_every=100,
    checkpoint_every=300,
    keep_checkpoints=1,
    sample_every=0,
    seed=3,
    ema_rate=0.99,
)
CFGS = {
    "toy_ncsn": dict(
        COMMON,
        network="mlp",
        sigma_max=20.0,
        sigma_min=1.0,
        num_levels=6,
        step_lr=0.05,
        n_steps_each=5,
        denoise=False,
        langevin_steps=30,
    ),
    "toy_edm": dict(
        COMMON,
        network="edm_mlp",
        loss="edm",
        activation="swish",
        sigma_max=80.0,
        sigma_min=0.01,
        num_levels=8,
        schedule="karras",
        sigma_data=4.1,
        sigma_dist="loguniform",
        sampler="heun",
        step_lr=5e-5,
        n_steps_each=3,
        langevin_steps=30,
        s_churn=10.0,
        ode_tol=1e-3,
    ),
}
OPTS = {
    "annealed_langevin": {},
    "langevin": {},
    "consistent_annealed": {},
    "predictor_corrector": {},
    "heun": {},
    "ode": {},
    "edm": {},
}
samples = {}
for name, flat in CFGS.items():
    wd = os.path.join(OUT, name)
    runs.train(config.from_flat(flat), wd, progress=False)
    run = runs.load(wd)
    for s in samplers.SAMPLERS:
        out = runs.generate(run, 64, seed=5, sampler=s)
        samples[f"{name}/{s}"] = out.samples
        samples[f"{name}/{s}/num_evals"] = np.int64(out.num_evals)
    # the served score at given sigmas / levels
    x = np.random.RandomState(0).randn(16, 2).astype(np.float32) * 4
    samples[f"{name}/score_levels_x"] = x
    path = runs.export(run, os.path.join(OUT, "export"), model_name=name)
    loaded = tf.saved_model.load(path)
    served = loaded.signatures["serving_default"](
        num_samples=tf.constant(32), seed=tf.constant([5, 0])
    )
    samples[f"{name}/served"] = served["samples"].numpy()
    lv = tf.constant(np.arange(16) % len(run.sigmas), tf.int32)
    samples[f"{name}/served_score"] = loaded.signatures["score"](x=tf.constant(x), levels=lv)[
        "score"
    ].numpy()
    print(name, "step", run.step, path)
np.savez_compressed(os.path.join(OUT, "samples.npz"), **samples)
