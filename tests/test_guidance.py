"""Class-conditional models and guidance (``networks.contract.Guided``), against exact answers.

* The conditional two-mode toy (class 0: N((-5, -5), I), class 1: N((5, 5), I), weights 0.2 /
  0.8) has exact conditional and unconditional denoisers at every sigma
  (``GaussianMixtureToy.denoise``): at w = 1 class k's samples pass the kernel two-sample
  test against exact draws of its Gaussian, at w = 0 against p.
* For Gaussian classes the guided denoiser D_w = D_ref + w (D - D_ref) is linear in x, so the
  probability-flow ODE is linear and its output is Gaussian with a mean and variance that
  follow from a 1-D ODE in log sigma (integrated here by RK4 at 20,000 steps): every
  deterministic solver of order 2 or more must land on them for w = 2 and 4.
* Per-sample seeding: sample i of seed s is the same at any batch size and split.
"""

import numpy as np
import pytest
import tensorflow as tf

from tf_score import data, sampling
from tf_score.evaluation import metrics
from tf_score.networks import contract
from tf_score.noise import grids

TOY = data.get_toy("two_mode")
EXACT = contract.DenoiserFunction(TOY.denoise, TOY.num_classes, name="exact two-mode")
#: the toy preset's sampling: karras rho = 7 from 80, starts at the data's mean (3, 3) + sigma_1
#: z, a labelled sample's at its class's mean (the deterministic solvers carry the start's
#: centre through: from the data's mean class 0 would end 8 / 80 = 0.1 off)
SPACE = sampling.SampleSpace((2,), (-8.0, 8.0), (3.0, 3.0), TOY.locs)
GRID = grids.karras_sigmas(80.0, 0.01, 40, 7.0).astype(np.float32)
N = 2000


def _exact_class(k, n, seed):
    """n exact draws of component k."""
    z = np.random.default_rng(seed).standard_normal((n, 2))
    return np.asarray(TOY.locs[k]) + TOY.scales[k] * z


@pytest.mark.parametrize("label", [0, 1])
def test_the_exact_conditional_toy_at_w1_is_its_class_and_at_w0_is_p(label):
    """Heun on the exact denoiser, n = 2000: class k at w = 1 against N(mu_k, I), and w = 0
    (the unconditional denoiser, whatever the labels) against exact draws of p; kernel
    two-sample test, 500 permutations, p > 0.01 (a correct sampler fails 1 in 100)."""
    labels = tf.fill([N], label)
    cond = sampling.draw("heun", EXACT.conditioned(labels, guidance=1.0), GRID, N, 11, SPACE)
    _, p_cond = metrics.kernel_two_sample_test(cond.samples.numpy(), _exact_class(label, N, 1),
                                               num_permutations=500, seed=0)  # fmt: skip
    assert p_cond > 0.01
    unc = sampling.draw("heun", EXACT.conditioned(labels, guidance=0.0), GRID, N, 12, SPACE)
    exact_p = TOY.sample(N, seed=tf.constant([5, 6])).numpy()
    _, p_unc = metrics.kernel_two_sample_test(unc.samples.numpy(), exact_p, 500, seed=0)
    assert p_unc > 0.01
    # w = 0 and w = 1 evaluate one denoiser per step; a guided draw both (2 per call)
    assert int(cond.num_evals) == int(unc.num_evals) == 2 * len(GRID) - 1
    guided = sampling.draw("heun", EXACT.conditioned(labels[:8], guidance=2.0), GRID, 8, 0, SPACE)
    assert int(guided.num_evals) == 2 * int(cond.num_evals)


# --- the closed form of guidance between two Gaussians ------------------------------------------

M_C, V_C = np.array([2.0, -1.0]), 0.5  # the conditional model: N(M_C, V_C I)
M_R, V_R = np.array([0.0, 0.5]), 2.0  # the reference (unconditional or weak): N(M_R, V_R I)
LINEAR_SPACE = sampling.SampleSpace((2,), (-4.0, 4.0), (0.0, 0.0))
LINEAR_GRID = grids.karras_sigmas(80.0, 0.002, 40, 7.0).astype(np.float32)


def _gaussian_denoiser(mean, var):
    return lambda x, sigma: (var * x + sigma[:, None] ** 2 * mean) / (var + sigma[:, None] ** 2)


def _two_gaussians(x, sigma, labels=None):
    """Class 0: N(M_C, V_C I); "no label" (index 1): N(M_R, V_R I)."""
    d_c = _gaussian_denoiser(M_C.astype(np.float32), V_C)(x, sigma)
    d_r = _gaussian_denoiser(M_R.astype(np.float32), V_R)(x, sigma)
    if labels is None:
        return d_r
    return tf.where((tf.cast(labels, tf.int32) == 0)[:, None], d_c, d_r)


LINEAR = contract.DenoiserFunction(_two_gaussians, num_classes=1, name="two Gaussians")


def _affine(w, sigma):
    """D_w(x; sigma) = a x + b."""
    s2 = sigma**2
    a = (1 - w) * V_R / (V_R + s2) + w * V_C / (V_C + s2)
    b = (1 - w) * M_R * s2 / (V_R + s2) + w * M_C * s2 / (V_C + s2)
    return a, b


def _ode_moments(w, grid, start_mean, start_var, steps=20_000):
    """Mean and variance of x after the probability-flow ODE dx/dsigma = (x - D_w) / sigma from
    N(start_mean, start_var I) at grid[0] down to grid[-1] (RK4 in t = log sigma), then the
    solvers' last step to 0, x <- D_w(x; grid[-1])."""

    def f(t, m, v):
        a, b = _affine(w, np.exp(t))
        return (1 - a) * m - b, 2 * (1 - a) * v

    t0, t1 = np.log(float(grid[0])), np.log(float(grid[-1]))
    h, t, m, v = (t1 - t0) / steps, t0, np.asarray(start_mean, np.float64), float(start_var)
    for _ in range(steps):
        k1 = f(t, m, v)
        k2 = f(t + h / 2, m + h / 2 * k1[0], v + h / 2 * k1[1])
        k3 = f(t + h / 2, m + h / 2 * k2[0], v + h / 2 * k2[1])
        k4 = f(t + h, m + h * k3[0], v + h * k3[1])
        m = m + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        v = v + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        t += h
    a, b = _affine(w, float(grid[-1]))
    return a * m + b, a**2 * v


DETERMINISTIC = ("heun", "dpm2", "lms", "dpmpp_2m", "dpm_adaptive")
#: EDM's grid 80 -> 0.002 at 160 levels: at w = 4 the guided flow contracts the variance 250
#: times, and on 40 levels second-order solvers leave it 10-25% off (measured); at 160 under 1%
FINE_GRID = grids.karras_sigmas(80.0, 0.002, 160, 7.0).astype(np.float32)


@pytest.mark.parametrize("w", [2.0, 4.0])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_guided_probability_flow_lands_on_the_closed_form(name, w):
    """Classifier-free guidance between N((2, -1), 0.5 I) (class 0) and N((0, 0.5), 2 I) ("no
    label"), n = 20,000: each coordinate's mean within 4 SE of the closed form's, its variance
    within 4 SE (4%); the adaptive solver at rtol = atol = 1e-4."""
    n = 20_000
    options = dict(rtol=1e-4, atol=1e-4) if name == "dpm_adaptive" else {}
    view = LINEAR.conditioned(tf.zeros([n], tf.int32), guidance=w)
    x = sampling.draw(name, view, FINE_GRID, n, 3, LINEAR_SPACE, **options).samples.numpy()
    mean, var = _ode_moments(w, FINE_GRID, LINEAR_SPACE.data_mean, float(FINE_GRID[0]) ** 2)
    assert np.all(np.abs(x.mean(0) - mean) < 4 * np.sqrt(var / n)), (x.mean(0), mean)
    assert np.all(np.abs(x.var(0) / var - 1) < 4 * np.sqrt(2 / n)), (x.var(0), var)


def test_the_closed_form_is_not_the_conditional_one():
    """The test above can fail: at w = 4 the closed form's variance is far from class 0's."""
    mean, var = _ode_moments(4.0, LINEAR_GRID, (0.0, 0.0), float(LINEAR_GRID[0]) ** 2)
    assert var < 0.8 * V_C and np.all(np.abs(mean - M_C) > 0.2)
    mean1, var1 = _ode_moments(1.0, LINEAR_GRID, M_C, float(LINEAR_GRID[0]) ** 2, steps=4000)
    assert abs(var1 - V_C) < 0.01 and np.all(np.abs(mean1 - M_C) < 0.01)


def test_autoguidance_and_an_interval_are_the_same_view():
    """Autoguidance by a weak model equals classifier-free guidance when the weak model is the
    unconditional one; a guidance interval that holds no sigma of the grid is w = 1."""
    strong = contract.DenoiserFunction(_gaussian_denoiser(M_C.astype(np.float32), V_C))
    weak = contract.DenoiserFunction(_gaussian_denoiser(M_R.astype(np.float32), V_R))
    labels = tf.zeros([64], tf.int32)
    auto = sampling.draw("heun", contract.conditioned(strong, None, 3.0, weak=weak), LINEAR_GRID,
                         64, 5, LINEAR_SPACE)  # fmt: skip
    cfg = sampling.draw("heun", LINEAR.conditioned(labels, 3.0), LINEAR_GRID, 64, 5,
                        LINEAR_SPACE)  # fmt: skip
    np.testing.assert_allclose(auto.samples, cfg.samples, rtol=0, atol=1e-5)
    assert int(auto.num_evals) == int(cfg.num_evals)
    outside = sampling.draw("heun", LINEAR.conditioned(labels, 3.0, interval=(100.0, 200.0)),
                            LINEAR_GRID, 64, 5, LINEAR_SPACE)  # fmt: skip
    plain = sampling.draw("heun", LINEAR.conditioned(labels, 1.0), LINEAR_GRID, 64, 5,
                          LINEAR_SPACE)  # fmt: skip
    np.testing.assert_allclose(outside.samples, plain.samples, rtol=0, atol=1e-5)


def test_guidance_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="unconditional"):
        contract.conditioned(contract.DenoiserFunction(TOY.denoise), tf.zeros([2], tf.int32))
    with pytest.raises(ValueError, match="needs labels"):
        contract.guide(EXACT, False, 2.0)
    with pytest.raises(ValueError, match="interval"):
        contract.guide(EXACT, True, 2.0, interval=(3.0, 1.0))


# --- per-sample seeding ---------------------------------------------------------------------------

STOCHASTIC = ("euler_ancestral", "dpm2_ancestral", "dpmpp_2m_sde", "edm")


@pytest.mark.parametrize("name", STOCHASTIC)
def test_a_sample_does_not_depend_on_its_batch(name):
    """Samples 0-11 of seed 4 drawn as one batch, as 5 + 7 and as 7 + 5 (seeds (4, 0) and
    (4, i), the pair a served call takes): the same samples (to float32 round-off of the
    batch's matrix products), conditioned per sample; the batch convention is not."""
    model = EXACT.conditioned(tf.constant([0, 1] * 6), guidance=2.0)
    whole = sampling.draw(name, model, GRID[::6], 12, 4, SPACE).samples.numpy()
    for first in (5, 7):
        parts = []
        for lo, hi in ((0, first), (first, 12)):
            view = EXACT.conditioned(tf.constant(([0, 1] * 6)[lo:hi]), guidance=2.0)
            out = sampling.draw(name, view, GRID[::6], hi - lo, tf.constant([4, lo]), SPACE)
            parts.append(out.samples.numpy())
        np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-4)
    # the batch convention: samples 6-11 of one batch are not batch 1 (seed (4, 1)) of two
    second = EXACT.conditioned(tf.constant([0, 1] * 3), guidance=2.0)
    batch_1 = sampling.draw(name, second, GRID[::6], 6, tf.constant([4, 1]), SPACE,
                            seeding="batch").samples.numpy()  # fmt: skip
    whole_b = sampling.draw(name, model, GRID[::6], 12, 4, SPACE, seeding="batch")
    assert np.abs(whole_b.samples.numpy()[6:] - batch_1).max() > 1e-2


def test_per_sample_draws_are_standard_normal_and_independent():
    """The per-sample stream is N(0, 1): 200,000 values' mean and variance within 5 SE, rows of
    different samples uncorrelated (|r| < 0.02 at n = 2000 rows)."""
    seed = tf.constant([9, 0, 0])
    z = sampling.registry.normal([2000, 100], seed).numpy()
    assert abs(z.mean()) < 5 / np.sqrt(z.size) and abs(z.var() - 1) < 5 * np.sqrt(2 / z.size)
    assert abs(np.corrcoef(z[:-1].ravel(), z[1:].ravel())[0, 1]) < 0.02
    later = sampling.registry.normal([10, 100], tf.constant([9, 0, 1990])).numpy()
    np.testing.assert_array_equal(later, z[1990:])
    u = sampling.registry.uniform([50, 3], seed, -2.0, 2.0).numpy()  # rows of 3 (padded to 4)
    np.testing.assert_array_equal(
        sampling.registry.uniform([5, 3], tf.constant([9, 0, 45]), -2.0, 2.0).numpy(), u[45:]
    )
    assert u.min() >= -2.0 and u.max() < 2.0 and abs(u.mean()) < 0.3


# --- labels through the data, conditional networks ----------------------------------------------


def test_the_labelled_toy_stream_labels_each_point_by_its_component():
    """Batch k of the labelled two-mode stream: the labels' class-1 fraction is 0.8 within 5
    SE (n = 8192), and each class's points have their component's mean (5 SE) and sd 1 (5%)."""
    ds = data.toy_dataset(TOY, 8192, tf.constant([1, 2]), labelled=True)
    x, y = (t.numpy() for t in next(iter(ds)))
    n = len(y)
    assert abs(y.mean() - 0.8) < 5 * np.sqrt(0.16 / n)
    for k in (0, 1):
        pts = x[y == k]
        assert np.all(np.abs(pts.mean(0) - TOY.locs[k]) < 5 / np.sqrt(len(pts)))
        assert np.all(np.abs(pts.std(0) - 1.0) < 0.05)


def test_image_labels_come_from_folders_and_npz_and_are_checked(tmp_path):
    from PIL import Image

    from tf_score import config

    for k, name in enumerate(("cats", "dogs")):
        (tmp_path / "f" / name).mkdir(parents=True)
        for i in range(2 + k):
            Image.fromarray(np.full((8, 8), 40 * k + i, np.uint8)).save(
                tmp_path / "f" / name / f"{i}.png"
            )
    images, labels, classes = data.pipelines.load_labelled_folder(str(tmp_path / "f"))
    assert classes == ["cats", "dogs"] and labels.tolist() == [0, 0, 1, 1, 1]
    assert images[2, 0, 0, 0] == 40 and images.shape == (5, 8, 8, 1)
    cfg = config.DataConfig(dataset="folder", data_path=str(tmp_path / "f"), num_classes=2)
    ds, shape, *_ = data.load_training_images(cfg, labels=True)
    pairs = list(ds.as_numpy_iterator())
    assert [int(y) for _, y in pairs] == [0, 0, 1, 1, 1] and shape == (8, 8, 1)
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 8, 8), np.uint8), labels=[0, 2, 1])
    npz = config.DataConfig(dataset="npz", data_path=str(tmp_path / "d.npz"), num_classes=3)
    ds, *_ = data.load_training_images(npz, labels=True)
    assert [int(y) for _, y in ds.as_numpy_iterator()] == [0, 2, 1]
    with pytest.raises(config.ConfigError, match=r"must lie in \[0, 1\] \(num_classes=2\)"):
        data.load_training_images(npz.__class__(**{**npz.__dict__, "num_classes": 2}),
                                  labels=True)  # fmt: skip
    with pytest.raises(config.ConfigError, match="num_classes=3: dataset=celeb_a has no labels"):
        config.DataConfig(dataset="celeb_a", num_classes=3)


def test_a_conditional_network_has_a_no_label_row_and_round_trips(tmp_path):
    """The class embedding has num_classes + 1 rows; no labels is the last row; labels change
    the output; get_config and a .keras file round-trip it."""
    import keras

    from tf_score.networks import EDMMLP

    net = EDMMLP((2,), hidden_units=(16, 16), embed_dim=8, num_classes=3, name="score")
    net.build()
    assert tuple(net.class_embed.embeddings.shape) == (4, 8)
    x, sigma = tf.random.normal([5, 2]), tf.fill([5], 1.5)
    np.testing.assert_array_equal(net(x, sigma), net(x, sigma, labels=tf.fill([5], 3)))
    net.class_embed.embeddings.assign(tf.random.normal([4, 8]))
    assert np.abs(net(x, sigma, labels=tf.fill([5], 0)) - net(x, sigma)).max() > 1e-4
    net.save(tmp_path / "net.keras")
    back = keras.models.load_model(tmp_path / "net.keras")
    assert back.num_classes == 3
    one = tf.fill([5], 1)
    np.testing.assert_allclose(back(x, sigma, labels=one), net(x, sigma, labels=one),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="unconditional"):
        EDMMLP((2,), hidden_units=(8,), name="u")(x, sigma, labels=tf.fill([5], 0))


def test_label_dropout_replaces_that_fraction_of_labels_by_no_label():
    """The loss's dropout: of 20,000 labels 10% (within 5 SE) reach the network as index
    num_classes, the rest unchanged."""
    from tf_score import losses

    seen = []

    class Recorder:
        num_classes, data_scale, sigma_data, parameterization = 2, 1.0, 1.0, "edm"

        def __call__(self, x, sigma, training=False, labels=None):
            seen.append(labels)
            return x

    labels = tf.zeros([20_000], tf.int32)
    losses.denoising_loss(Recorder(), tf.zeros([20_000, 2]), tf.constant([1, 2]),
                          lambda n, s: tf.ones([n]), labels=labels, label_dropout=0.1)  # fmt: skip
    got = seen[0].numpy()
    assert set(np.unique(got)) == {0, 2}
    assert abs((got == 2).mean() - 0.1) < 5 * np.sqrt(0.09 / len(got))


def test_num_classes_needs_a_network_that_takes_labels_and_the_toys_components():
    from tf_score import api, config

    with pytest.raises(config.ConfigError, match="network=mlp takes no class labels"):
        api.check(config.from_flat(dict(dataset="two_mode", num_classes=2)))
    with pytest.raises(config.ConfigError, match="has 2 classes"):
        api.check(config.from_flat(dict(dataset="two_mode", network="edm_mlp", loss="edm",
                                        schedule="karras", num_classes=3)))  # fmt: skip
    with pytest.raises(config.ConfigError, match="num_classes is for class-conditional"):
        api.check(config.from_flat(dict(dataset="mnist", model="classifier", network="conv",
                                        num_classes=10)))  # fmt: skip


# --- a trained conditional toy: the API, the command line, the export ---------------------------


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """toy_edm_cond.cfg's model (edm_mlp 128 x 3, label dropout 0.1) trained 6,000 steps."""
    from tf_score import api, config

    root = tmp_path_factory.mktemp("cond")
    cfg = config.from_flat(dict(
        dataset="two_mode", network="edm_mlp", loss="edm", hidden_units=(128, 128, 128),
        embed_dim=64, activation="swish", sigma_max=80.0, sigma_min=0.01, num_levels=40,
        schedule="karras", sigma_data=4.1, p_mean=0.5, p_std=1.7, learning_rate=2e-3,
        lr_schedule="cosine", lr_warmup_steps=200, batch_size=256, num_steps=6000,
        ema_rate=0.999, checkpoint_every=6000, log_every=3000, steps_per_loop=200,
        sampler="heun", num_classes=2, label_dropout=0.1,
    ))  # fmt: skip
    api.train(cfg, str(root / "run"), progress=False)
    return api.load(str(root / "run")), root


def test_the_learned_conditional_toy_draws_each_class_and_p(cond_run):
    """The trained model (6,000 steps) through api.generate, n = 1000, Heun on the run's grid:
    class k at w = 1 and p at w = 0 each pass the kernel two-sample test (500 permutations,
    p > 0.01) against the exact denoisers' samples through the same solver, grid and seeds
    (the exact ones are held to the true distributions above; this holds the learning),
    class k's mean within 0.15 of mu_k and its sd within 6% of 1 (5 SE at n = 1000 plus the
    6,000-step model's error). Guided (w = 2) samples stay in their class's mode and are
    narrower (sd < 0.97)."""
    from tf_score import api
    from tf_score.evaluation import metrics
    from tf_score.families.run import Guidance, generate_from

    run, _ = cond_run

    def both(seed, **how):
        learned = api.generate(run, 1000, seed=seed, **how).samples
        exact = generate_from(EXACT, run.sigmas, run.space, 1000, seed, run.config.sampler,
                              guidance=Guidance(how.get("labels"))).samples  # fmt: skip
        return learned, metrics.kernel_two_sample_test(learned, exact, 500, seed=0)[1]

    for k in (0, 1):
        x, p = both(k, labels=k)
        assert p > 0.01
        assert np.all(np.abs(x.mean(0) - TOY.locs[k]) < 0.15) and np.all(
            np.abs(x.std(0) - 1) < 0.06
        )
        guided = api.generate(run, 1000, seed=k, labels=k, guidance=2.0).samples
        assert np.all(np.sign(guided) == np.sign(TOY.locs[k])) and np.all(guided.std(0) < 0.97)
    x, p = both(3)
    assert p > 0.01 and abs(np.mean(x[:, 0] > 0) - 0.8) < 5 * np.sqrt(0.16 / 1000)


def test_served_conditional_samples_are_the_apis_through_the_cli_and_grpc(cond_run, repo_root):
    """The export's sample signatures take labels int32 [N] and guidance float32 []: served
    seed (s, 0) equals api.generate(..., labels, seed=s, guidance=w) and (s, i) its samples from
    i on, through saved_model_cli run and over gRPC (serving/loopback.py); a bad label or
    guidance is refused in the graph with one line naming it; a guided request counts 2
    network calls per evaluation against the cap."""
    import os
    import sys

    import grpc
    from test_export import _cli_run

    from tf_score import api

    run, root = cond_run
    path = api.export(run, str(root / "export"), samplers=("euler_ancestral",),
                      max_samples=64, max_evaluations=40 * 79)  # fmt: skip
    labels = np.array([0, 1, 1, 0, 1, 0], np.int32)
    want = api.generate(run, 6, seed=4, labels=labels, guidance=2.0)
    code, out, err = _cli_run(path, "serving_default", root, num_samples=np.int32(6),
                              seed=np.array([4, 0], np.int32), labels=labels,
                              guidance=np.float32(2.0))  # fmt: skip
    assert code == 0, err[-2000:]
    np.testing.assert_allclose(out["samples"], want.samples, rtol=0, atol=1e-4)
    assert int(out["num_evals"]) == want.num_evals == 2 * 79
    code, _, err = _cli_run(path, "serving_default", root, num_samples=np.int32(2),
                            seed=np.array([4, 0], np.int32), labels=np.array([2], np.int32),
                            guidance=np.float32(1.0))  # fmt: skip
    assert code != 0 and "labels must lie in [0, 1]" in err
    sys.path.insert(0, os.path.join(repo_root, "serving"))
    import grpc_client
    import loopback

    server, port = loopback.serve(path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = grpc_client.sample_request(os.path.basename(path), 4, [4, 2])
            grpc_client.add_inputs(request, labels=labels[2:], guidance=np.float32(2.0))
            got = grpc_client.predict(channel, request)
            np.testing.assert_allclose(got["samples"], want.samples[2:], rtol=0, atol=1e-4)
            for bad, message in ((dict(labels=labels[:3], guidance=np.float32(2.0)),
                                  "labels must hold one class for all samples or one per"),
                                 (dict(labels=labels[:1], guidance=np.float32(np.nan)),
                                  "guidance must be finite"),
                                 (dict(labels=np.zeros([0], np.int32), guidance=np.float32(2)),
                                  "guidance needs labels"),
                                 (dict(labels=labels[:1], guidance=np.float32(2.0)),
                                  "must be <= 3160")):  # fmt: skip
                n = 21 if "3160" in message else 4  # 21 x 158 > 3160 >= 20 x 158
                request = grpc_client.sample_request(os.path.basename(path), n, [4, 0])
                grpc_client.add_inputs(request, **bad)
                with pytest.raises(grpc.RpcError, match=message):
                    grpc_client.predict(channel, request)
            request = grpc_client.sample_request(os.path.basename(path), 20, [4, 0])
            grpc_client.add_inputs(request, labels=labels[:1], guidance=np.float32(2.0))
            assert grpc_client.predict(channel, request)["samples"].shape == (20, 2)
    finally:
        server.stop(None)


def test_run_sample_draws_a_class_guided_and_refuses_a_bad_label(cond_run, repo_root):
    """run_sample.py --class=1 --guidance=2 writes samples all in class 1's mode; --class=2 is
    one line naming labels and what is allowed, before any sampling."""
    import os
    import subprocess
    import sys

    run, root = cond_run
    out_dir = root / "cli"
    common = [sys.executable, "run_sample.py", f"--workdir={run.workdir}",
              f"--output_dir={out_dir}", "--num_samples=200"]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    ok = subprocess.run([*common, "--class=1", "--guidance=2"], cwd=repo_root, env=env,
                        capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    x = np.load(out_dir / "samples.npz")["samples"]
    assert x.shape == (200, 2) and np.all(x > 0)
    bad = subprocess.run([*common, "--class=2"], cwd=repo_root, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: labels must lie in [0, 1] (num_classes=2), got [2]"
    )


def test_the_conditional_toys_evaluation_holds_each_row_against_the_exact_denoisers(
    cond_run, tmp_path
):
    """api.evaluate of a conditional toy: one row per class, p and the guided classes, each
    with its evaluations (79 Heun calls, 158 guided), mode weight and the two-sample p of the
    learned samples against the exact denoisers' through the same solver (> 0.01 at w = 1)."""
    from tf_score import api

    run, _ = cond_run
    assert run.config.data.class_means == (-5.0, -5.0, 5.0, 5.0)  # recorded by training
    assert run.space.class_means == ((-5.0, -5.0), (5.0, 5.0))
    m = api.evaluate(run, str(tmp_path), seed=0)
    assert list(m["rows"]) == ["class 0", "class 1", "no label", "class 0, w=2", "class 1, w=2"]
    rows = m["rows"]
    assert rows["class 0"]["num_evals"] == 79 and rows["class 1, w=2"]["num_evals"] == 158
    assert rows["class 0"]["mode_weight"] < 0.01 and rows["class 1"]["mode_weight"] > 0.99
    assert all(rows[k]["two_sample_p_vs_exact"] > 0.01 for k in ("class 0", "class 1", "no label"))
    assert (tmp_path / "samples.png").exists() and (tmp_path / "metrics.json").exists()


def test_per_sample_seeding_holds_under_xla():
    """The per-sample draws compile under XLA (jit=True): samples 0-9 as one batch and as
    4 + 6 are the same (XLA's Philox stream differs from TensorFlow's, so only within it)."""
    model = EXACT.conditioned(tf.constant([1] * 10), guidance=2.0)
    whole = sampling.draw("euler_ancestral", model, GRID[::6], 10, 4, SPACE, jit=True).samples
    parts = [
        sampling.draw("euler_ancestral", EXACT.conditioned(tf.constant([1] * (hi - lo)), 2.0),
                      GRID[::6], hi - lo, tf.constant([4, lo]), SPACE, jit=True).samples
        for lo, hi in ((0, 4), (4, 10))
    ]  # fmt: skip
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-4)


def test_a_conditional_image_runs_tensorboard_grid_has_one_row_per_class():
    """sample_summaries of a conditional image config: 10 classes x 8 columns, each row the
    samples of one class drawn as api.generate draws them (labels 0..9, 8 each)."""
    from tf_score import config
    from tf_score.families import score_model

    cfg = config.from_flat(dict(
        dataset="mnist", network="edm_unet", loss="edm", ngf=8, channel_mults=(1, 2),
        num_res_blocks=1, schedule="karras", num_levels=4, sigma_max=10.0, sigma_min=0.01,
        sampler="euler", num_classes=10, data_shape=(28, 28, 1), data_mean=(0.13,),
    ))  # fmt: skip
    net = score_model.network_fn(cfg)()
    grid = score_model.sample_summaries(cfg, (28, 28, 1), 16)({"score": net}, 0)
    (image,) = grid.values()
    assert image.shape == (10 * 29 + 1, 8 * 29 + 1, 1)  # 28-pixel tiles, 1-pixel gaps
    np.testing.assert_array_equal(score_model.class_labels(10, 8)[::8], np.arange(10))
