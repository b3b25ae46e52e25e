"""A workdir and an export written by cdb1b46 (before the config became data: its config.json,
of version 1, holds every solver's option values flat beside ``sampler``, some set away from
their defaults) still load, and each solver draws the same samples from them with the same
seeds (``tests/data/make_cdb1b46_reference.py`` recorded them with that commit's library).
Tolerance: float32 round-off of reordered arithmetic (atol 1e-4 on samples of scale ~5)."""

import dataclasses
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tf_score import api, config, sampling

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cdb1b46")
SAMPLERS = ("heun", "euler_ancestral", "dpmpp_2m_sde", "dpm2", "annealed_langevin")


@pytest.fixture(scope="module")
def reference():
    with np.load(os.path.join(DATA, "samples.npz")) as f:
        return dict(f)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cdb1b46") / "toy_edm"
    shutil.copytree(os.path.join(DATA, "toy_edm"), workdir)  # a copy: loading is read-only
    return api.load(str(workdir))


def test_its_version_1_config_reads_as_the_option_values_it_gave(run):
    """Each solver takes the values config.json gives it (eta 0.5 for the ancestral solvers,
    sde_eta 1.5 and solver_type heun for DPM-Solver++(2M) SDE), and writes back as version 2."""
    assert sampling.options_of(run.config.sampler, "euler_ancestral") == {"eta": 0.5}
    assert sampling.options_of(run.config.sampler, "dpmpp_2m_sde") == {
        "sde_eta": 1.5, "solver_type": "heun"
    }  # fmt: skip
    again = config.ExperimentConfig.from_json(run.config.to_json())
    assert again == run.config and again.to_dict()["version"] == config.CONFIG_VERSION


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_solver_draws_the_cdb1b46_samples(run, reference, sampler):
    out = api.generate(run, 32, seed=7, sampler=sampler, seeding="batch")  # cdb1b46's seeding
    np.testing.assert_allclose(out.samples, reference[sampler], rtol=0, atol=1e-4)
    assert out.num_evals == int(reference[f"{sampler}/num_evals"])


def test_the_cdb1b46_export_serves_its_samples_and_so_does_a_new_one(run, reference, tmp_path):
    old = tf.saved_model.load(os.path.join(DATA, "export", "toy_edm", "300")).signatures
    seed = dict(num_samples=tf.constant(16), seed=tf.constant([7, 0]))
    np.testing.assert_allclose(old["serving_default"](**seed)["samples"].numpy(),
                               reference["served"], atol=1e-5)  # fmt: skip
    # an export of today's with the seeding of cdb1b46 (--seeding=batch)
    batch = dataclasses.replace(run, config=run.config.replace(evaluation={"seeding": "batch"}))
    new = tf.saved_model.load(api.export(batch, str(tmp_path), samplers=("dpmpp_2m_sde",)))
    served = new.signatures["sample_dpmpp_2m_sde"](**seed, sde_eta=tf.constant(1.0))
    np.testing.assert_allclose(served["samples"].numpy(), reference["served_dpmpp_2m_sde"],
                               atol=1e-4)  # fmt: skip
    np.testing.assert_allclose(new.signatures["serving_default"](**seed)["samples"].numpy(),
                               reference["served"], atol=1e-4)  # fmt: skip
