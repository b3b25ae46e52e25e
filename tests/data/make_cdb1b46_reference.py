"""Record the cdb1b46 reference of tests/test_cdb1b46.py: a small toy EDM workdir whose
config.json is of version 1 (every solver's option values flat beside ``sampler``, some set
away from their defaults), its export, and the samples of several solvers and of the export,
with fixed seeds. Runs only against the library of commit cdb1b46 (its API):

    git clone REPO /tmp/base && git -C /tmp/base checkout cdb1b46
    cd /tmp/base && python /path/to/tests/data/make_cdb1b46_reference.py OUT
"""

import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.getcwd())  # the cdb1b46 checkout
from tf_score import api, config

OUT = sys.argv[1]
CFG = dict(
    dataset="two_mode", network="edm_mlp", loss="edm", hidden_units=(32, 32), embed_dim=16,
    sigma_max=40.0, sigma_min=0.02, num_levels=8, schedule="karras", sigma_data=4.1,
    num_steps=300, batch_size=64, log_every=100, checkpoint_every=300, keep_checkpoints=1,
    seed=5, ema_rate=0.99, sampler="heun", eta=0.5, sde_eta=1.5, solver_type="heun",
    step_lr=5e-5, n_steps_each=3,
)  # fmt: skip
SAMPLERS = ("heun", "euler_ancestral", "dpmpp_2m_sde", "dpm2", "annealed_langevin")


def main():
    workdir = os.path.join(OUT, "toy_edm")
    api.train(config.from_flat(CFG), workdir, progress=False)
    run = api.load(workdir)
    path = api.export(run, os.path.join(OUT, "export"), model_name="toy_edm",
                      samplers=("dpmpp_2m_sde",))  # fmt: skip
    out = {}
    for name in SAMPLERS:
        g = api.generate(run, 32, seed=7, sampler=name)
        out[name], out[f"{name}/num_evals"] = g.samples, np.int32(g.num_evals)
    served = tf.saved_model.load(path).signatures
    out["served"] = served["serving_default"](
        num_samples=tf.constant(16), seed=tf.constant([7, 0])
    )["samples"].numpy()
    out["served_dpmpp_2m_sde"] = served["sample_dpmpp_2m_sde"](
        num_samples=tf.constant(16), seed=tf.constant([7, 0]), sde_eta=tf.constant(1.0)
    )["samples"].numpy()
    np.savez(os.path.join(OUT, "samples.npz"), **out)


if __name__ == "__main__":
    main()
