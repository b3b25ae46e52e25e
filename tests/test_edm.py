"""Continuous-noise VE models with EDM preconditioning: the coefficients against their closed
forms, the denoiser-to-score conversion on a Gaussian whose optimal denoiser is known, every
registered sampler on that exact denoiser's grid, and training that lowers the EDM loss."""

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_score import api, config, data, losses, noise, sampling
from tf_score.families import score_model
from tf_score.networks import EDMMLP, EDMUNet, contract, preconditioning
from tf_score.sampling import solvers
from tf_score.training import loop

MU, S0 = np.array([0.3, -0.2], np.float32), 0.5  # data N(MU, S0^2 I), in data units


def test_preconditioning_coefficients_match_the_closed_forms():
    sd = 0.5
    for s in (0.002, 0.3, 1.0, 80.0):
        c_skip, c_out, c_in, c_noise = (float(c) for c in preconditioning.preconditioning(s, sd))
        assert c_skip == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-6)
        assert c_out == pytest.approx(s * sd / np.sqrt(s**2 + sd**2), rel=1e-6)
        assert c_in == pytest.approx(1 / np.sqrt(s**2 + sd**2), rel=1e-6)
        assert c_noise == pytest.approx(np.log(s) / 4, rel=1e-6, abs=1e-7)
        # EDM's weight makes the effective weight of F's target unit: lambda c_out^2 = 1
        assert float(losses.loss_weight(s, sd)) * c_out**2 == pytest.approx(1.0, rel=1e-5)
        assert [
            float(c) for c in preconditioning.preconditioning(s, sd, "ncsnv2")[:3]
        ] == pytest.approx([1.0, s, 1.0])
        assert float(losses.loss_weight(s, sd, "ncsnv2")) == pytest.approx(1 / s**2, rel=1e-6)


def test_karras_grid():
    g = noise.karras_sigmas(80.0, 0.002, 18, rho=7.0)
    assert g.shape == (18,) and g[0] == pytest.approx(80.0) and g[-1] == pytest.approx(0.002)
    assert np.all(np.diff(g) < 0)
    i = 5 / 17  # the formula at i = 5
    expected = (80.0 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert g[5] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="a karras grid needs num_levels >= 2"):
        noise.karras_sigmas(80.0, 0.002, 1)


class OptimalGaussianDenoiser(preconditioning.Denoiser):
    """D*(x; sigma) = MU + S0^2 / (S0^2 + sigma^2) (x - MU), the optimal denoiser of
    N(MU, S0^2 I), written as F = (D_y - c_skip y) / c_out so it goes through ``call``'s
    preconditioning and units (network scale y = 2 x - 1, as for images)."""

    def raw(self, y_in, c_noise, training=False):
        s_y = tf.exp(4.0 * c_noise)[:, None]
        c_skip, c_out, c_in, _ = (
            c[:, None] for c in preconditioning.preconditioning(s_y[:, 0], self.sigma_data)
        )
        y = y_in / c_in
        a, b = self.data_scale, self.data_shift
        mu_y, s0_y = a * MU + b, a * S0
        d_y = mu_y + s0_y**2 / (s0_y**2 + s_y**2) * (y - mu_y)
        return (d_y - c_skip * y) / c_out


def _optimal():
    m = OptimalGaussianDenoiser((2,), sigma_data=1.0, data_scale=2.0, data_shift=-1.0)
    m.build()
    return m


def test_denoiser_to_score_is_tweedie_on_a_gaussian():
    m = _optimal()
    x = tf.constant(np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    for sigma in (0.01, 0.7, 5.0):
        d = m(x, tf.fill([64], sigma)).numpy()
        expected_d = MU + S0**2 / (S0**2 + sigma**2) * (x.numpy() - MU)
        np.testing.assert_allclose(d, expected_d, rtol=1e-4, atol=1e-5)
        expected_score = -(x.numpy() - MU) / (S0**2 + sigma**2)
        np.testing.assert_allclose(m.score(x, sigma).numpy(), expected_score, rtol=1e-3, atol=1e-4)


def test_the_optimal_denoiser_minimises_the_edm_loss():
    """The EDM loss of the optimal denoiser equals its closed form, the minimum
    E lambda(s) a^2 D S0^2 sigma^2 / (S0^2 + sigma^2) (the posterior variance), and a
    denoiser shifted by 0.05 pays exactly lambda a^2 D 0.05^2 more."""
    m = _optimal()
    n = 20000
    x = MU + S0 * tf.random.stateless_normal([n, 2], [1, 2])
    sigma = 0.4

    def fixed(batch, seed):
        return tf.fill([batch], sigma)

    loss, _ = losses.denoising_loss(m, x, tf.constant([3, 4]), fixed)
    a = 2.0
    expected = float(losses.loss_weight(a * sigma, 1.0)) * a**2 * 2 * S0**2 * sigma**2
    expected /= S0**2 + sigma**2
    se = float(np.std(loss.numpy()) / np.sqrt(n))
    assert abs(float(np.mean(loss)) - expected) < 5 * se, (np.mean(loss), expected)

    class Shifted(OptimalGaussianDenoiser):
        def call(self, x, sigma, training=False):
            return super().call(x, sigma, training) + 0.05

    worse = Shifted((2,), sigma_data=1.0, data_scale=2.0, data_shift=-1.0)
    worse.build()
    # paired (same sigma and noise): the excess is exactly lambda a^2 D 0.05^2 in expectation
    diff = losses.denoising_loss(worse, x, tf.constant([3, 4]), fixed)[0].numpy() - loss.numpy()
    excess = float(losses.loss_weight(a * sigma, 1.0)) * a**2 * 2 * 0.05**2
    assert abs(diff.mean() - excess) < 5 * diff.std() / np.sqrt(n) + 1e-6, (diff.mean(), excess)
    assert diff.mean() > 0


GRID = noise.karras_sigmas(20.0, 0.002, 30)
SPACE = sampling.SampleSpace((2,), (-1.0, 1.0))
#: options per sampler on the exact Gaussian denoiser (the rest: library defaults)
OPTIONS = {
    # a_i / sigma_i^2 = step_lr / sigma_L^2 = 0.05, T = 100: about 5 relaxation times a level
    "annealed_langevin": {"step_lr": 2e-7, "n_steps_each": 100},
    "langevin": {"langevin_step_size": 0.005, "langevin_steps": 3000},
    "edm": {"s_churn": 20.0},
}
#: consistent annealed sampling uses one eta for every level, the largest level ratio
#: 1 - sigma_(i+1) / sigma_i, so it contracts where the grid's ratio is smaller; it is checked
#: against its own exact variance recursion on this linear problem (0.185 on the karras grid
#: instead of the data's 0.25: a property of the method on grids of uneven ratio).


def _cas_variance(grid, start_var):
    g = np.asarray(grid, np.float64)
    eta, nxt, v = solvers.consistent_eta(g), np.append(g[1:], 0.0), start_var
    for i in range(len(g)):
        v = (1 - eta * g[i] ** 2 / (S0**2 + g[i] ** 2)) ** 2 * v + max(
            nxt[i] ** 2 - ((1 - eta) * g[i]) ** 2, 0.0
        )
    r2 = ((1 - eta) * g[-1]) ** 2  # the final denoise at the residual noise level
    return (1 - r2 / (S0**2 + r2)) ** 2 * v


#: first-order solvers: at 30 levels their variance error is above 5% by construction (Euler
#: ancestral's own variance map gives sd 1.19 for 1.3 at 40 sigmas); tests/test_denoiser_solvers.py
#: measures them against their exact error and order instead
FIRST_ORDER = ("euler", "euler_ancestral")


@pytest.mark.parametrize("name", [s for s in sampling.builtin_names() if s not in FIRST_ORDER])
def test_every_sampler_on_the_continuous_grid_reproduces_the_gaussian(name):
    """The exact denoiser of N(MU, S0^2 I) on EDM's rho = 7 grid 20 -> 0.002 (30 levels):
    mean within 5 SE and variance within 5 SE + 5% of the data's (+ sigma_L^2 for the
    samplers that end at sigma_L), n = 4000, for every solver of order 2 or more. The ODE
    uses the continuous score directly."""
    out = sampling.draw(name, _optimal(), GRID, 4000, 7, SPACE, **OPTIONS.get(name, {}))
    x = out.samples.numpy()
    var = S0**2 + (GRID[-1] ** 2 if name in ("annealed_langevin", "langevin") else 0.0)
    if name == "consistent_annealed":  # start: U[-1, 1] (variance 1/3) + sigma_1 z
        var = _cas_variance(GRID, 1 / 3 + GRID[0] ** 2)
        assert abs(var - 0.185) < 0.005
    n = len(x)
    assert np.all(np.abs(x.mean(0) - MU) < 5 * np.sqrt(var / n)), (x.mean(0), MU)
    assert np.all(np.abs(x.var(0) - var) < 5 * var * np.sqrt(2 / n) + 0.05 * var), x.var(0)


def test_the_ode_counts_one_evaluation_per_call_on_a_continuous_model():
    model = _optimal()
    out = sampling.draw("ode", model, GRID, 256, 0, SPACE, ode_tol=1e-3)
    grid = tf.constant(GRID, tf.float32)
    on_levels = contract.LevelScoreModel(
        lambda x, levels: model.score(x, tf.gather(grid, levels)), GRID
    )
    interp = sampling.draw("ode", on_levels, GRID, 256, 0, SPACE, ode_tol=1e-3)
    assert int(interp.num_evals) > int(out.num_evals) > 10  # interpolation: 2 per call


@pytest.mark.parametrize("network", ["edm_mlp", "edm_unet"])
def test_denoiser_networks_are_serialisable_and_precondition(network):
    if network == "edm_mlp":
        m = EDMMLP((2,), hidden_units=(16, 16), sigma_data=4.0, embed_dim=6)
        x = tf.random.stateless_normal([4, 2], [1, 1])
        m.build()
        # the noise embedding (6 wide: 6 x 6 twice) and its projections (6 x 16 per layer)
        assert m.embed.dense2.kernel.shape == (6, 6) and m.emb_1.kernel.shape == (6, 16)
    else:
        m = EDMUNet((8, 8, 1), ngf=4, channel_mults=(1, 2), num_blocks=1, data_scale=2.0,
                    data_shift=-1.0)  # fmt: skip
        x = tf.random.stateless_uniform([4, 8, 8, 1], [1, 1])
    m.build()
    clone = type(m).from_config(m.get_config())
    clone.build()
    clone.set_weights(m.get_weights())
    sigma = tf.constant([0.01, 0.1, 1.0, 10.0])
    np.testing.assert_allclose(clone(x, sigma).numpy(), m(x, sigma).numpy(), rtol=1e-5)
    # at sigma -> 0 the EDM denoiser is the identity (c_skip -> 1, c_out -> 0)
    np.testing.assert_allclose(m(x, tf.fill([4], 1e-5)).numpy(), x.numpy(), atol=1e-3)


def test_short_real_mnist_training_lowers_the_edm_loss(tmp_path):
    """The EDM loss on a fixed held-out batch (fixed sigmas and noise) falls after 60 steps
    of a small U-Net on 512 real MNIST images."""
    from conftest import MNIST_DATA_DIR

    from tf_score import data

    cfg = config.from_flat(
        dict(dataset="mnist", network="edm_unet", loss="edm", ngf=8, channel_mults=(1, 2),
             num_res_blocks=1, sigma_max=17.0, sigma_min=0.002, num_levels=10,
             schedule="karras", learning_rate=2e-3, sampler="heun")
    )  # fmt: skip
    images, _ = data.load_tfds_images("mnist", "train", data_dir=MNIST_DATA_DIR)
    bundle = score_model.image_bundle(cfg, images.take(512), (28, 28, 1), num_summary_samples=4)
    keras.utils.set_random_seed(0)
    initial = bundle.model_fns["score"]()
    tcfg = dataclasses.replace(
        cfg.train, num_steps=60, batch_size=32, log_every=30, checkpoint_every=60,
        steps_per_loop=30, ema_rate=0.0,
    )  # fmt: skip
    trained = loop.train(bundle, tcfg, str(tmp_path), seed=cfg.seed).models["score"]
    test, _ = data.load_tfds_images("mnist", "test", data_dir=MNIST_DATA_DIR)
    x = tf.cast(next(iter(test.batch(128))), tf.float32) / 255.0
    loss_fn = score_model.denoising_objective_loss(cfg)

    def held_out(model):
        return np.mean(
            [np.mean(loss_fn({"score": model}, x, tf.constant([k, 9])).loss) for k in range(4)]
        )

    before, after = held_out(initial), held_out(trained)
    assert after < 0.7 * before, (before, after)


def test_a_continuous_run_trains_loads_generates_and_exports_with_one_seeding(tmp_path):
    """The library path end to end for a continuous model: api.train -> api.load ->
    api.generate (Heun on the karras grid, 35 evaluations) equals the exported
    serving_default at served seed (s, 0); its score endpoint is the score on the grid."""
    cfg = config.from_flat(
        dict(network="edm_mlp", loss="edm", hidden_units=(16, 16), sigma_max=80.0,
             sigma_min=0.01, num_levels=18, schedule="karras", sigma_data=4.1,
             sigma_dist="loguniform", num_steps=60, batch_size=64, log_every=30,
             checkpoint_every=60, steps_per_loop=30, sampler="heun")
    )  # fmt: skip
    api.train(cfg, str(tmp_path / "w"), progress=False)
    run = api.load(str(tmp_path / "w"))
    assert run.space.data_mean == (3.0, 3.0)  # the two-mode mean, recorded by training
    out = api.generate(run, 8, seed=2)
    assert out.num_evals == 35 and run.sigmas[0] == pytest.approx(80.0)
    path = api.export(run, str(tmp_path / "export"))
    loaded = tf.saved_model.load(path)
    served = loaded.signatures["serving_default"](
        num_samples=tf.constant(8), seed=tf.constant([2, 0])
    )
    np.testing.assert_allclose(served["samples"].numpy(), out.samples, rtol=1e-5, atol=1e-4)
    x = tf.constant(out.samples)
    sigma = tf.fill([8], np.float32(run.sigmas[17]))
    expected = run.models["score"].score(x, run.sigmas[17]).numpy()
    got = loaded.signatures["score"](x=x, sigma=sigma)["score"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_two_mode_fast_evaluation_on_the_exact_score(tmp_path):
    """``evaluate.two_mode_fast`` with the run's score replaced by the exact two-mode score on
    a 40-level karras grid 80 -> 0.01 (Heun, 79 evaluations), started at the recorded mean:
    mode weight 0.80 within 3 SE at n = 2560 (2 seeds), each mode's sd within 4% of 1.0 (measured
    1.00 / 1.03 at n = 20480), and both sampling seeds pass the two-sample test at 0.01."""
    from tf_score import data
    from tf_score.families import evaluate

    cfg = config.from_flat(
        dict(network="edm_mlp", loss="edm", hidden_units=(8,), sigma_max=80.0, sigma_min=0.01,
             num_levels=40, schedule="karras", sigma_data=4.1, num_steps=1, batch_size=8,
             log_every=1, checkpoint_every=1, steps_per_loop=1, sampler="heun")
    )  # fmt: skip
    api.train(cfg, str(tmp_path / "w"), progress=False)
    run = api.load(str(tmp_path / "w"))
    run.__dict__["model"] = contract.ScoreFunction(data.get_toy("two_mode").score)
    r = evaluate.two_mode_fast(run, ("heun",), num_seeds=2, num_permutations=100)
    row = r.metrics["samplers"]["heun"]
    assert row["num_evals"] == 79
    assert abs(row["mode_weight"] - 0.8) < 3 * row["mode_weight_se"], row
    np.testing.assert_allclose(row["mode_sd"], 1.0, atol=0.04)
    assert min(row["two_sample_p"]) > 0.01, row


def test_bits_per_dim_of_the_exact_gaussian_score_on_dequantised_mnist():
    """``evaluate.bits_per_dim`` with the exact score of N(0.4, 0.3^2 I) on 28x28 MNIST test
    images: the ODE's log p_sigma_min of each dequantised image is the Gaussian's
    N(0.4, (0.3^2 + sigma_min^2) I) in closed form, so bits/dim = 8 - log p(x) / (D ln 2) per
    image to 2e-3 (the prior N(mean, sigma_max^2 I) at sigma_max = 17 misses the true
    marginal by 3e-4 bits/dim; Hutchinson is exact for this isotropic Jacobian)."""
    from conftest import MNIST_DATA_DIR

    from tf_score.families import evaluate

    m, s = 0.4, 0.3
    cfg = config.from_flat(
        dict(dataset="mnist", data_dir=MNIST_DATA_DIR, download=False, network="edm_unet",
             loss="edm", sigma_max=17.0, sigma_min=0.002, num_levels=18, schedule="karras",
             data_shape=(28, 28, 1), data_mean=(m,))
    )  # fmt: skip
    run = api.Run(workdir="unused", config=cfg, models={}, step=0)
    grid = cfg.noise.sigmas()

    def exact(x, sigma):  # sigma [B]
        return -(x - m) / (s**2 + contract.expand_like(tf.square(sigma), x))

    run.__dict__["model"] = contract.ScoreFunction(exact)  # the cached property: exact score
    summary, bpd = evaluate.bits_per_dim(run, n=6, seed=3, batch_size=3)
    images, _ = data.load_tfds_images("mnist", "test", data_dir=MNIST_DATA_DIR)
    k = np.stack(list(images.take(6).as_numpy_iterator())).astype(np.float32)
    want = []
    for b in range(2):
        u_seed, _ = sampling.batch_seeds(3, b)
        u = tf.random.stateless_uniform([3, 28, 28, 1], u_seed, alg="philox").numpy()
        x = (k[3 * b : 3 * b + 3] + u) / 256.0
        v = s**2 + grid[-1] ** 2
        log_p = -0.5 * ((x - m) ** 2).sum((1, 2, 3)) / v - 0.5 * 784 * np.log(2 * np.pi * v)
        want.append(8.0 - log_p / (784 * np.log(2.0)))
    np.testing.assert_allclose(bpd, np.concatenate(want), atol=2e-3)
    assert summary["n"] == 6 and abs(summary["mean"] - bpd.mean()) < 1e-9
    assert summary["se"] == pytest.approx(bpd.std(ddof=1) / np.sqrt(6))


def test_fid_during_training_is_a_scalar_with_its_floor(tmp_path):
    """--fid_every on a tiny MNIST U-Net (a random-weight saved classifier: the values mean
    nothing, the plumbing is the point): a missing classifier fails before anything is
    written; then fid/fid, fid/floor, fid/ratio and fid/num_evals at steps 2, 4 and the last."""
    from conftest import MNIST_DATA_DIR
    from tensorboard.backend.event_processing import event_accumulator

    from tf_score.families import classifier

    net = classifier.DigitClassifier()
    net.build()
    os.makedirs(tmp_path / "clf")
    net.save(str(tmp_path / "clf" / "classifier.keras"))
    flat = dict(dataset="mnist", data_dir=MNIST_DATA_DIR, download=False, network="edm_unet",
                loss="edm", ngf=4, channel_mults=(1,), num_res_blocks=1, sigma_max=17.0,
                sigma_min=0.002, num_levels=4, schedule="karras", sampler="heun",
                heun_steps=2, num_steps=5, batch_size=8, log_every=5, checkpoint_every=5,
                steps_per_loop=5, fid_every=2, fid_samples=20)  # fmt: skip
    with pytest.raises(api.RunError, match=r"fid_every: .*need a trained classifier"):
        api.train(config.from_flat(flat), str(tmp_path / "w"), progress=False)
    assert not os.path.exists(tmp_path / "w")
    cfg = config.from_flat({**flat, "classifier": str(tmp_path / "clf")})
    api.train(cfg, str(tmp_path / "w"), progress=False)
    tb = str(tmp_path / "w" / "tb")
    acc = event_accumulator.EventAccumulator(tb, size_guidance={"tensors": 0})
    acc.Reload()
    got = {t: {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(t)}
           for t in ("fid/fid", "fid/floor", "fid/ratio", "fid/num_evals")}  # fmt: skip
    assert sorted(got["fid/fid"]) == [2, 4, 5]
    for s in (2, 4, 5):
        assert got["fid/fid"][s] > 0 and got["fid/floor"][s] > 0
        assert got["fid/ratio"][s] == pytest.approx(got["fid/fid"][s] / got["fid/floor"][s], 1e-5)
        assert got["fid/num_evals"][s] == 3  # Heun on 2 levels: 2N - 1
    assert len(set(got["fid/floor"].values())) == 1  # one floor, the same held-out images


def test_fid_every_is_for_image_score_models():
    with pytest.raises(config.ConfigError, match="fid_every is for image score models"):
        api.check(config.from_flat(dict(fid_every=10)))
