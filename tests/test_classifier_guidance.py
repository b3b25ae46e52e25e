"""Classifier guidance (``contract.Guided`` guided by a noise-conditional classifier) against
exact answers, and the noise-conditional digit classifier that makes it.

* Bayes and Tweedie: with the exact unconditional denoiser D_u and the exact classifier
  p(y | x_sigma) of the two-mode toy, D_u + sigma^2 grad log p(y | x_sigma) is the exact
  conditional denoiser D_c, at every sigma. So classifier guidance at weight w is
  classifier-free guidance at w with exact denoisers, pointwise and through a solver.
* ``NoisyDigitClassifier`` learns p(y | x + sigma z) from MNIST: accurate at small sigma, at
  chance at large sigma; it round-trips through .keras, and FID refuses it.
"""

import numpy as np
import pytest
import tensorflow as tf
from conftest import MNIST_DATA_DIR

from tf_score import data, sampling
from tf_score.config import ConfigError, from_flat
from tf_score.evaluation import metrics
from tf_score.families import classifier, evaluate, run, score_model
from tf_score.networks import contract
from tf_score.noise import grids

TOY = data.get_toy("two_mode")
#: the exact unconditional denoiser (no labels: an unconditional model)
UNCONDITIONAL = contract.DenoiserFunction(TOY.denoise, name="exact two-mode p")
#: the exact conditional denoiser (classifier-free guidance's both models)
CONDITIONAL = contract.DenoiserFunction(TOY.denoise, TOY.num_classes, name="exact two-mode")
CLASSIFIER = contract.ClassifierFunction(TOY.class_logits, TOY.num_classes)
#: starts at the data's mean (3, 3) + sigma_1 z, a labelled one at its class's mean (the
#: deterministic solvers carry the start's centre: from (3, 3) class 0 ends 8 / 80 = 0.1 off)
SPACE = sampling.SampleSpace((2,), (-8.0, 8.0), (3.0, 3.0), TOY.locs)
GRID = grids.karras_sigmas(80.0, 0.01, 40, 7.0).astype(np.float32)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.0, 4.0])
def test_exact_classifier_guidance_is_exact_classifier_free_guidance(w):
    """At 400 points around both modes and sigma from 0.01 to 80, D_u + w sigma^2 grad log
    p(y | x) equals D_u + w (D_c - D_u) of the exact denoisers (float32: within 1e-3 of
    values up to ~10), for both labels; at w = 1 that is the conditional denoiser."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(0.0, 6.0, (400, 2)), tf.float32)
    labels = tf.constant(rng.integers(0, 2, 400), tf.int32)
    by_classifier = UNCONDITIONAL.conditioned(labels, guidance=w, weak=CLASSIFIER)
    free = CONDITIONAL.conditioned(labels, guidance=w)
    for sigma in (0.01, 0.3, 1.0, 3.0, 10.0, 80.0):
        got = by_classifier.denoise(x, sigma).numpy()
        np.testing.assert_allclose(got, free.denoise(x, sigma).numpy(), atol=1e-3)
        if w == 1.0:
            exact = TOY.denoise(x, sigma, labels).numpy()
            np.testing.assert_allclose(got, exact, atol=1e-3)
    # the classifier's passes are not network evaluations: one per call (none at w = 0 extra)
    assert by_classifier.network_calls() == 1 and free.network_calls() == (1 if w in (0, 1) else 2)


def test_classifier_guided_samples_of_the_minority_class_are_its_gaussian():
    """Heun through the compiled solver (the gradient tape inside it), n = 2000 of class 0
    (weight 0.2) at w = 1 from the unconditional model and the classifier, against exact
    draws of N((-5, -5), I): kernel two-sample test, 500 permutations, p > 0.01 (a correct
    sampler fails 1 in 100); at w = 4 the chains are classifier-free guidance's with the
    exact denoisers."""
    n, labels = 2000, tf.zeros([2000], tf.int32)
    view = UNCONDITIONAL.conditioned(labels, guidance=1.0, weak=CLASSIFIER)
    out = sampling.draw("heun", view, GRID, n, 3, SPACE)
    exact = np.asarray(TOY.locs[0]) + np.random.default_rng(1).standard_normal((n, 2))
    _, p = metrics.kernel_two_sample_test(out.samples.numpy(), exact, 500, seed=0)
    assert p > 0.01
    assert int(out.num_evals) == 2 * len(GRID) - 1  # one network call per solver call
    # w = 4: the same chains as classifier-free guidance with the exact denoisers (same seed)
    strong = UNCONDITIONAL.conditioned(labels[:500], guidance=4.0, weak=CLASSIFIER)
    by_classifier = sampling.draw("heun", strong, GRID, 500, 4, SPACE).samples.numpy()
    free = sampling.draw("heun", CONDITIONAL.conditioned(labels[:500], guidance=4.0), GRID, 500,
                         4, SPACE).samples.numpy()  # fmt: skip
    np.testing.assert_allclose(by_classifier, free, atol=2e-3)


def test_classifier_guidance_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="needs labels"):
        contract.guide(UNCONDITIONAL, False, 2.0, CLASSIFIER)
    three = contract.ClassifierFunction(TOY.class_logits, 3)
    with pytest.raises(ValueError, match="3 classes, the model 2"):
        contract.guide(CONDITIONAL, True, 2.0, three)
    # an unconditional model takes labels when a classifier guides it, in the classifier's range
    how = run.Guidance(labels=[1, 0], guidance=2.0, guide=CLASSIFIER)
    assert how.labels_for(2, UNCONDITIONAL).tolist() == [1, 0]
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 1\]"):
        run.Guidance(labels=[2], guidance=2.0, guide=CLASSIFIER).labels_for(2, UNCONDITIONAL)
    with pytest.raises(ConfigError, match="unconditional"):
        run.Guidance(labels=[1], guidance=2.0).labels_for(2, UNCONDITIONAL)


@pytest.fixture(scope="module")
def noisy_classifier(tmp_path_factory):
    """A NoisyDigitClassifier of 2 epochs on 3000 MNIST images, sigmas of EDM2's lognormal in
    the network's scale (ln 2 sigma ~ N(-0.8, 1.6^2), as the MNIST presets)."""
    x, y = data.load_tfds_labelled("mnist", "train[:3000]", MNIST_DATA_DIR)
    xt, yt = data.load_tfds_labelled("mnist", "test[:1000]", MNIST_DATA_DIR)
    cfg = from_flat(dict(dataset="mnist", model="classifier", network="noisy_conv",
                         p_mean=-0.8, p_std=1.6))  # fmt: skip
    path = str(tmp_path_factory.mktemp("noisy_classifier"))
    r = classifier.train_classifier((x, y), (xt, yt), path, num_steps=47, verbose=0,
                                    sigma_fn=score_model.training_sigmas(cfg))  # fmt: skip
    return r, classifier.load_classifier(path), (xt, yt)


def test_a_noisy_classifier_reads_digits_at_small_sigma_and_guesses_at_large(noisy_classifier):
    """On 1000 test images: accuracy > 0.75 at sigma = 0.05, < 0.3 at sigma = 20 (chance 0.1:
    a digit of amplitude 1 under noise sd 20); its gradient points towards the asked class
    (the logit of y rises along it). The clean classifier reaches 0.85 on the same 3000
    images (test_metrics), this one 0.81 at sigma = 0.05: about 40% of its training sigmas
    exceed 0.3, where a digit is hard to read, so it sees fewer legible ones."""
    r, model, (xt, yt) = noisy_classifier
    assert isinstance(model, classifier.NoisyDigitClassifier) and 0.3 < r.test_accuracy < 1.0
    x = xt.astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    for sigma, check in ((0.05, lambda a: a > 0.75), (20.0, lambda a: a < 0.3)):
        noisy = x + sigma * rng.standard_normal(x.shape).astype(np.float32)
        acc = np.mean(np.argmax(model.class_logits(noisy, sigma).numpy(), -1) == yt)
        assert check(acc), (sigma, acc)
    x0, want = tf.constant(x[:64] + 0.5 * rng.standard_normal(x[:64].shape), tf.float32), yt[:64]
    grad = contract.class_gradient(model, x0, 0.5, tf.constant((want + 1) % 10, tf.int32))
    before = model.class_logits(x0, 0.5).numpy()
    after = model.class_logits(x0 + 0.01 * grad / tf.norm(grad), 0.5).numpy()
    rows = np.arange(64)
    assert np.mean(after[rows, (want + 1) % 10] > before[rows, (want + 1) % 10]) > 0.9


def test_a_noisy_classifier_round_trips_and_is_no_fid_extractor(noisy_classifier, tmp_path):
    _, model, (xt, _) = noisy_classifier
    path = str(tmp_path / "again.keras")
    model.save(path)
    again = classifier.load_classifier(path)
    x = xt[:8].astype(np.float32) / 255.0
    np.testing.assert_allclose(again.class_logits(x, 0.3).numpy(),
                               model.class_logits(x, 0.3).numpy(), atol=1e-5)  # fmt: skip
    assert again.sigma_data == model.sigma_data
    with pytest.raises(ValueError, match="noise-conditional"):
        again.features(x)
    fake = run.Run(str(tmp_path), None, {}, 0)
    with pytest.raises(evaluate.EvaluationError, match="network=conv"):
        evaluate._extractor(fake, "classifier", path, None)
