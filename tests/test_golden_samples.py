"""float32 samples are unchanged by the speed work of issue 16 (the fused normalisations, the
dilated convolutions in the conv kernel, the two-term Langevin update): the same networks
(weights from a checkpoint) and seeds give the samples the library drew at commit 7c2a407
(``tests/data/make_golden_samples.py``). Tolerance: float32 round-off of the reordered
normalisation arithmetic, carried through the chains (atol 1e-4 on samples of scale ~1)."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


sys.path.insert(0, DATA)
try:
    import make_golden_samples as golden
finally:
    sys.path.remove(DATA)

CASES = [f"{net}/{name}" for net, name, _ in golden.CASES]


@pytest.fixture(scope="module")
def drawn():
    nets = golden.networks()
    status = tf.train.Checkpoint(**nets).read(os.path.join(DATA, "golden_nets"))
    status.assert_existing_objects_matched()
    return golden.draw_all(nets), dict(np.load(os.path.join(DATA, "golden_samples.npz")))


def test_every_case_is_recorded(drawn):
    now, then = drawn
    assert sorted(now) == sorted(then) == sorted(CASES) and len(CASES) == 6


@pytest.mark.parametrize("case", CASES)
def test_float32_samples_match_the_reference_commit(drawn, case):
    now, then = drawn
    np.testing.assert_allclose(now[case], then[case], rtol=0, atol=1e-4)
