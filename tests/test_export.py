"""SavedModel export: every signature called the way TF Serving loads it (saved_model_cli run,
a separate process) and with tf.saved_model.load, against the in-process result."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_vae import _vae_config

from tf_score import config, sampling
from tf_score.config import TrainConfig
from tf_score.export import savedmodel
from tf_score.families import score_model, vae
from tf_score.networks import ConditionalResNet, NoiseConditionalMLP, contract
from tf_score.noise import geometric_sigmas
from tf_score.training import loop

TOY_SIGMAS = geometric_sigmas(20.0, 1.0, 10)
#: the toy export's sampler: annealed Langevin, T = 5, eps 0.05, final denoise
TOY_SAMPLER = config.SamplerConfig().replace(step_lr=0.05, n_steps_each=5)
TOY_SPACE = sampling.SampleSpace((2,), (-8.0, 8.0))


def _toy_model(network):
    """The level-conditioned toy network under the model contract."""
    return contract.LevelScoreModel(network, TOY_SIGMAS)


def _toy_samples(model, n, seed):
    """In-process equivalent of the toy export's serving_default."""
    out = sampling.draw(
        "annealed_langevin", _toy_model(model), TOY_SIGMAS, n, seed, TOY_SPACE,
        **sampling.options_of(TOY_SAMPLER),
    )  # fmt: skip
    return out.samples, out.num_evals


CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


def _cli_run(path, signature, tmp_path, **inputs):
    """saved_model_cli run with .npy inputs; returns (returncode, outputs dict, stderr)."""
    files = []
    for name, value in inputs.items():
        f = tmp_path / f"in_{signature}_{name}.npy"
        np.save(f, value)
        files.append(f"{name}={f}")
    out = tmp_path / f"out_{signature}_{len(os.listdir(tmp_path))}"
    proc = subprocess.run(
        [
            CLI,
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            signature,
            "--inputs",
            ";".join(files),
            "--outdir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    outputs = {}
    if proc.returncode == 0:
        outputs = {f[:-4]: np.load(out / f) for f in os.listdir(out)}
    return proc.returncode, outputs, proc.stderr


@pytest.fixture(scope="module")
def toy_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    bundle = score_model.toy_bundle(config.from_flat(dict(hidden_units=(32, 32), n_steps_each=2)))
    cfg = TrainConfig(num_steps=60, batch_size=64, steps_per_loop=30)
    result = loop.train(bundle, cfg, str(root / "run"))
    model = result.ema_models["score"]
    path = savedmodel.version_dir(str(root / "export"), "toy", result.step)
    savedmodel.export_score_model(
        model,
        _toy_model(model),
        TOY_SIGMAS,
        TOY_SPACE,
        path,
        sampler=TOY_SAMPLER,
        samplers=("annealed_langevin",),
        max_samples=64,
        max_evaluations=2000,  # 39 samples of 51 evaluations
    )
    return model, path


def test_toy_export_layout_and_signatures(toy_export):
    _, path = toy_export
    assert path.endswith(os.path.join("export", "toy", "60"))
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {
        "serving_default",
        "sample",
        "sample_annealed_langevin",
        "score",
        "denoise",
        "limits",
    }
    caps = {k: v.numpy() for k, v in loaded.signatures["limits"](unused=tf.constant(0)).items()}
    assert set(caps) == {"max_samples", "max_score_batch", "max_evaluations", "evaluation_cost",
                         "flops_per_evaluation"}  # fmt: skip
    assert caps["max_samples"] == 64 and caps["max_evaluations"] == 2000
    assert caps["max_score_batch"] == 1024
    # the toy MLP (32-32) is far below 1 MFLOP: an evaluation costs one unit
    assert caps["evaluation_cost"] == 1 and 0 < caps["flops_per_evaluation"] < 10_000


def test_toy_sample_matches_in_process_via_cli_and_load(toy_export, tmp_path):
    model, path = toy_export
    seed = np.array([3, 4], np.int32)
    expected, evals = _toy_samples(model, 16, seed)
    rc, out, err = _cli_run(path, "serving_default", tmp_path, num_samples=np.int32(16), seed=seed)
    assert rc == 0, err[-2000:]
    np.testing.assert_allclose(out["samples"], expected.numpy(), rtol=1e-5, atol=1e-5)
    assert int(out["num_evals"]) == int(evals) == 10 * 5 + 1
    loaded = tf.saved_model.load(path)
    r = loaded.signatures["sample_annealed_langevin"](
        num_samples=tf.constant(16),
        seed=tf.constant(seed),
        n_steps_each=tf.constant(5),
        step_lr=tf.constant(0.05),
    )
    np.testing.assert_allclose(r["samples"].numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_toy_score_endpoints_match_the_model(toy_export, tmp_path):
    model, path = toy_export
    x = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32) * 5
    level = np.array([0, 1, 2, 7, 8, 9], np.int32)
    expected = model(x, level).numpy()
    # at the levels the network was trained on: its own output
    rc, out, err = _cli_run(path, "score", tmp_path, x=x, sigma=TOY_SIGMAS[level])
    assert rc == 0, err[-2000:]
    np.testing.assert_allclose(out["score"], expected, rtol=1e-5, atol=1e-6)
    loaded = tf.saved_model.load(path)
    # between levels: the in-process contract (log-sigma interpolation; above sigma_1 clamped)
    sigma = TOY_SIGMAS[level] * np.float32(1.05)
    between = _toy_model(model).score(tf.constant(x), tf.constant(sigma)).numpy()
    r = loaded.signatures["score"](x=tf.constant(x), sigma=tf.constant(sigma))
    np.testing.assert_allclose(r["score"].numpy(), between, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(between[0], expected[0], rtol=1e-5, atol=1e-6)
    d = loaded.signatures["denoise"](x=tf.constant(x), sigma=tf.constant(sigma))["denoised"]
    np.testing.assert_allclose(d.numpy(), x + sigma[:, None] ** 2 * between, rtol=1e-5, atol=1e-4)


def test_bad_requests_fail_with_a_message(toy_export, tmp_path):
    _, path = toy_export
    seed = np.array([0, 0], np.int32)
    # Through saved_model_cli (a separate process, as a server would run it) ...
    rc, _, err = _cli_run(path, "sample", tmp_path, num_samples=np.int32(10**6), seed=seed)
    assert rc != 0 and "num_samples must be <= 64" in err
    # ... and the other checks in-process: the same in-graph assertions.
    loaded = tf.saved_model.load(path)
    bad = [
        ("sample", {"num_samples": np.int32(0), "seed": seed}, "num_samples must be >= 1"),
        (
            "score",
            {"x": np.zeros((2, 2), np.float32), "sigma": np.array([1.0, 0.0], np.float32)},
            "sigma must be > 0",
        ),
        (
            "sample_annealed_langevin",
            {
                "num_samples": np.int32(4),
                "seed": seed,
                "n_steps_each": np.int32(0),
                "step_lr": np.float32(0.01),
            },
            "n_steps_each must be an integer >= 1",
        ),
    ]
    x2 = np.zeros((2, 2), np.float32)
    steps = {"num_samples": np.int32(4), "seed": seed, "n_steps_each": np.int32(5)}
    bad += [
        # the work cap: 40 samples x 51 evaluations > 2000; 40 x (50 x 10 + 1) likewise
        ("sample", {"num_samples": np.int32(40), "seed": seed},
         "num_samples x network evaluations must be <= 2000"),
        ("sample_annealed_langevin",
         {**steps, "num_samples": np.int32(40), "step_lr": np.float32(0.05),
          "n_steps_each": np.int32(50)},
         "network evaluations must be <= 2000"),
        ("sample_annealed_langevin", {**steps, "step_lr": np.float32(np.inf)},
         "step_lr must be a finite number > 0"),
        ("sample_annealed_langevin", {**steps, "step_lr": np.float32(-1.0)},
         "step_lr must be a finite number > 0"),
        # no export-time cap on step_lr any more: a diverging one fails on its output
        ("sample_annealed_langevin", {**steps, "step_lr": np.float32(1e30)},
         "samples came out non-finite"),
        ("score", {"x": np.array([[np.nan, 0], [0, 0]], np.float32),
                   "sigma": np.array([1.0, 1.0], np.float32)}, "x must be finite"),
        ("score", {"x": x2, "sigma": np.array([1.0, np.inf], np.float32)},
         "sigma must be finite"),
    ]  # fmt: skip
    for signature, inputs, message in bad:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})


def test_non_finite_outputs_are_an_error_not_an_answer():
    """Every endpoint returns through ``_finite_output``: NaN / inf in a float output (a
    model or sampler setting that diverged) fails the request with a message naming it."""
    checked = tf.function(savedmodel.finite_output)
    good = checked({"samples": tf.constant([1.0, 2.0]), "num_evals": tf.constant(3)})
    assert good["samples"].numpy().tolist() == [1.0, 2.0]
    for bad in (np.nan, np.inf):
        with pytest.raises(tf.errors.InvalidArgumentError, match="samples came out non-finite"):
            checked({"samples": tf.constant([1.0, bad]), "num_evals": tf.constant(3)})


def test_wrong_dtype_is_rejected_by_the_signature(toy_export):
    _, path = toy_export
    loaded = tf.saved_model.load(path)
    for num_samples in (tf.constant(4.0), tf.constant("five")):
        with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
            loaded.signatures["sample"](num_samples=num_samples, seed=tf.constant([0, 0]))


def test_tfsm_layer_reuses_the_score_endpoint_in_a_new_keras_model(toy_export):
    model, path = toy_export
    layer = keras.layers.TFSMLayer(path, call_endpoint="score")
    x_in = keras.Input((2,), name="x")
    sigma_in = keras.Input((), dtype="float32", name="sigma")
    # TFSMLayer passes its first input positionally and the rest as keyword arguments.
    out = layer(x_in, sigma=sigma_in)["score"]
    wrapper = keras.Model([x_in, sigma_in], keras.layers.Lambda(lambda s: -s)(out))
    x = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    level = np.array([0, 3, 5, 9], np.int32)
    np.testing.assert_allclose(
        wrapper([x, TOY_SIGMAS[level]]).numpy(), -model(x, level).numpy(), rtol=1e-5, atol=1e-6
    )


def test_image_model_export_samples_uint8_in_graph(tmp_path):
    keras.utils.set_random_seed(0)
    sigmas = geometric_sigmas(1.0, 0.01, 4)
    model = ConditionalResNet((8, 8, 1), sigmas, ngf=8, channel_mults=(1, 2), num_blocks=1)
    model.build()
    path = savedmodel.version_dir(str(tmp_path / "export"), "mnist", 1)
    sampler = config.SamplerConfig().replace(step_lr=2e-5, n_steps_each=3)
    score = contract.LevelScoreModel(model, sigmas)
    space = sampling.SampleSpace((8, 8, 1))
    savedmodel.export_score_model(model, score, sigmas, space, path, sampler=sampler)
    seed = np.array([5, 6], np.int32)
    expected = sampling.draw(
        "annealed_langevin", score, sigmas, 4, seed, space, **sampling.options_of(sampler)
    ).samples
    rc, out, err = _cli_run(path, "serving_default", tmp_path, num_samples=np.int32(4), seed=seed)
    assert rc == 0, err[-2000:]
    clipped = np.clip(expected.numpy(), 0, 1)
    np.testing.assert_allclose(out["samples"], clipped, rtol=1e-4, atol=1e-5)
    assert out["samples_uint8"].dtype == np.uint8 and out["samples_uint8"].shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(out["samples_uint8"], np.round(out["samples"] * 255))
    assert int(out["num_evals"]) == 4 * 3 + 1


@pytest.mark.parametrize("encoder", ["implicit", "gaussian"])
def test_vae_export_every_endpoint(encoder, tmp_path):
    keras.utils.set_random_seed(0)
    cfg = _vae_config((28, 28, 1), vae_encoder=encoder, latent_dim=4, hidden_units=(32,))
    models = {k: fn() for k, fn in vae.model_fns(cfg).items()}
    path = savedmodel.version_dir(str(tmp_path / "export"), f"vae_{encoder}", 1)
    vae.export_vae(models, cfg, path)
    loaded = tf.saved_model.load(path)
    expected_sigs = {"serving_default", "sample", "encode", "decode", "limits"}
    if encoder == "gaussian":
        expected_sigs.add("log_likelihood_bound")
    assert set(loaded.signatures) == expected_sigs
    seed = np.array([1, 2], np.int32)
    x = (np.random.default_rng(0).random((3, 28, 28, 1)) < 0.2).astype(np.float32)

    rc, out, err = _cli_run(path, "encode", tmp_path, x=x, seed=seed)
    assert rc == 0, err[-2000:]
    np.testing.assert_allclose(out["z"], models["encoder"].sample(x, seed).numpy(), atol=1e-5)
    z = out["z"]
    rc, out, err = _cli_run(path, "decode", tmp_path, z=z)
    assert rc == 0, err[-2000:]
    np.testing.assert_allclose(out["probs"], tf.sigmoid(models["decoder"](z)).numpy(), atol=1e-5)
    rc, out, err = _cli_run(path, "sample", tmp_path, num_samples=np.int32(5), seed=seed)
    assert rc == 0, err[-2000:]
    np.testing.assert_allclose(
        out["samples"], vae.prior_samples(cfg, models["decoder"], 5, seed).numpy(), atol=1e-5
    )
    assert out["samples_uint8"].shape == (5, 28, 28, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples must be >= 1"):
        loaded.signatures["sample"](num_samples=tf.constant(0), seed=tf.constant(seed))
    if encoder == "gaussian":
        r = loaded.signatures["log_likelihood_bound"](
            x=tf.constant(x), num_samples=tf.constant(50), seed=tf.constant(seed)
        )
        ref = vae.iwae_bound(models["encoder"], models["decoder"], x, 50, seed)
        np.testing.assert_allclose(r["iwae"].numpy(), ref.iwae.numpy(), rtol=1e-5)
        assert np.all(r["iwae"].numpy() >= r["elbo"].numpy() - 1e-4)


def _signature_inputs(signature, raw: dict) -> dict:
    """What TF Serving does with a request (serving/loopback.py)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "serving"))
    import loopback

    return loopback.signature_inputs(signature, raw)


def test_rest_columnar_request_body_matches_the_signature(toy_export, repo_root):
    """serving/sample_request.json, the body for POST /v1/models/<name>:predict, names exactly
    the inputs of the signature it selects, with values of the right shapes."""
    import json

    _, path = toy_export
    with open(os.path.join(repo_root, "serving", "sample_request.json")) as f:
        body = json.load(f)
    signature = tf.saved_model.load(path).signatures[body["signature_name"]]
    assert set(body["inputs"]) == set(signature.structured_input_signature[1])
    out = signature(**_signature_inputs(signature, body["inputs"]))
    assert out["samples"].shape == (body["inputs"]["num_samples"], 2)


def test_grpc_client_against_a_prediction_service_on_loopback(toy_export, repo_root):
    """serving/grpc_client.py's PredictRequest over real gRPC to a PredictionService backed by
    the SavedModel (TF Serving itself needs docker or its binary, neither available here)."""
    import grpc

    sys.path.insert(0, os.path.join(repo_root, "serving"))
    import grpc_client
    import loopback

    model, path = toy_export
    server, port = loopback.serve(path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            out = grpc_client.predict(channel, grpc_client.sample_request("toy", 8, [3, 4]))
            expected, _ = _toy_samples(model, 8, np.array([3, 4], np.int32))
            np.testing.assert_allclose(out["samples"], expected.numpy(), rtol=1e-5, atol=1e-5)
            with pytest.raises(grpc.RpcError, match="num_samples must be <= 64"):
                grpc_client.predict(channel, grpc_client.sample_request("toy", 65, [0, 0]))
    finally:
        server.stop(None)


def test_bounded_load_on_the_loopback_service_answers_right_and_refuses_over_budget(
    toy_export, repo_root, tmp_path
):
    """benchmarks/serving_load.py for 4 s with 3 clients: every valid answer equals the same
    request answered alone, every over-budget request is refused, nothing else fails."""
    import json

    _, path = toy_export
    out = tmp_path / "load.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/serving_load.py", f"--export={path}", "--clients=3",
         "--duration=4", "--num_samples=16", f"--out={out}"],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["wrong"] == 0 and report["error"] == 0
    assert report["answered"] > 0 and report["refused"] > 0
    assert report["limits"]["max_evaluations"] == 2000


class _PriorEncoder:
    """q(z|x) = p(z) = N(0, I) for every x: every importance weight is p(x|z)."""

    latent_dim = 3

    def distribution(self, x):
        zeros = tf.zeros([tf.shape(x)[0], self.latent_dim])
        return vae.tfd.MultivariateNormalDiag(loc=zeros, scale_diag=tf.ones_like(zeros))


def test_iwae_bound_decodes_in_chunks_of_bounded_rows():
    """Issue 29 #12: K importance samples of a batch were decoded at once (batch 1024 x K 5000
    is 5M rows, about 70 GB). Now a chunk of about chunk_bytes of pixels at a time, each draw
    counted once: with q = p(z) and a decoder of logits 0, log w = -P log 2 exactly, so the
    bound and the ELBO are exactly that whatever the chunking."""
    x = tf.constant((np.random.default_rng(0).random((3, 4, 4, 1)) < 0.5).astype(np.float32))
    rows_seen = []

    def decoder(z):
        rows_seen.append(int(z.shape[0]))
        return tf.zeros([tf.shape(z)[0], 4, 4, 1])

    # 16 pixels x 4 bytes x 8 copies = 512 bytes a row: 7 rows a chunk, 2 samples of the 3
    r = vae.iwae_bound(_PriorEncoder(), decoder, x, 50, tf.constant([1, 2]), chunk_bytes=7 * 512)
    assert max(rows_seen) == 6 and sum(rows_seen) == 3 * 50 and len(rows_seen) == 25
    exact = -16 * np.log(2.0)
    np.testing.assert_allclose(r.iwae.numpy(), exact, rtol=1e-6)
    np.testing.assert_allclose(r.elbo.numpy(), exact, rtol=1e-6)


def test_vae_export_caps_the_bound_s_work_refuses_non_finite_inputs_and_has_limits(tmp_path):
    """Issue 29 #12: batch x importance samples were unbounded (up to 1024 x 5000), NaN x went
    through every signature and there was no ``limits``. Now the bound's decodes count
    against max_evaluations (x the decoder's cost), floats must be finite, limits says so."""
    keras.utils.set_random_seed(0)
    cfg = _vae_config((28, 28, 1), vae_encoder="gaussian", latent_dim=4, hidden_units=(32,))
    models = {k: fn() for k, fn in vae.model_fns(cfg).items()}
    path = savedmodel.version_dir(str(tmp_path / "export"), "vae", 1)
    vae.export_vae(models, cfg, path, max_evaluations=2000)
    loaded = tf.saved_model.load(path)
    caps = {k: v.numpy() for k, v in loaded.signatures["limits"](unused=tf.constant(0)).items()}
    assert caps["max_evaluations"] == 2000 and caps["max_iwae_samples"] == 5000
    assert caps["max_batch"] == 1024 and caps["evaluation_cost"] == 1
    seed = tf.constant([1, 2])
    x = tf.constant((np.random.default_rng(0).random((3, 28, 28, 1)) < 0.2).astype(np.float32))
    bound = loaded.signatures["log_likelihood_bound"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"batch size x num_samples \(decodes\) must be <= 2000"):  # fmt: skip
        bound(x=x, num_samples=tf.constant(700), seed=seed)  # 2100 decodes
    r = bound(x=x, num_samples=tf.constant(600), seed=seed)  # 1800
    ref = vae.iwae_bound(models["encoder"], models["decoder"], x, 600, seed)
    np.testing.assert_allclose(r["iwae"].numpy(), ref.iwae.numpy(), rtol=1e-5)
    nan_x = tf.constant(np.full((2, 28, 28, 1), np.nan, np.float32))
    for name, inputs, message in [
        ("log_likelihood_bound", dict(x=nan_x, num_samples=tf.constant(5), seed=seed), "x must"),
        ("encode", dict(x=nan_x, seed=seed), "x must be finite"),
        ("decode", dict(z=tf.constant([[np.inf, 0, 0, 0]], tf.float32)), "z must be finite"),
    ]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            loaded.signatures[name](**inputs)


def test_the_export_s_work_cap_counts_the_network_s_cost(tmp_path):
    """Issue 29 #15: one cap of network evaluations let a 195k-parameter image network run
    23-31 minutes where the toy ran 3.6 s. An evaluation now costs max(1, ceil(MFLOPs)) units
    (tests/test_budget.py: 76 for that ResNet): this 2-MFLOP MLP is allowed a third of the
    toy's evaluations, and limits reports the cost."""
    keras.utils.set_random_seed(0)
    model = NoiseConditionalMLP(TOY_SIGMAS, data_dim=2, hidden_units=(1000, 1000))
    model.build()
    path = savedmodel.version_dir(str(tmp_path / "export"), "wide", 1)
    sampler = TOY_SAMPLER.replace(n_steps_each=1)  # 10 levels x 1 + the final denoise
    savedmodel.export_score_model(model, _toy_model(model), TOY_SIGMAS, TOY_SPACE, path,
                                  sampler=sampler, max_evaluations=132)  # fmt: skip
    loaded = tf.saved_model.load(path)
    caps = {k: v.numpy() for k, v in loaded.signatures["limits"](unused=tf.constant(0)).items()}
    assert caps["evaluation_cost"] == 3 and 2e6 < caps["flops_per_evaluation"] <= 3e6
    seed = tf.constant([0, 0])
    out = loaded.signatures["sample"](num_samples=tf.constant(4), seed=seed)  # 4 x 11 x 3 = 132
    assert out["samples"].shape == (4, 2) and int(out["num_evals"]) == 11
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"network evaluations x cost \(3 per evaluation"):  # fmt: skip
        loaded.signatures["sample"](num_samples=tf.constant(5), seed=seed)  # 55 evaluations


def _proto(dtype, dims, **values):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
    )
    return tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum, tensor_shape=shape, **values)


def test_loopback_checks_declared_shapes_and_values_before_allocating(
    toy_export, repo_root, monkeypatch
):
    """Issue 29 #14: a 21-byte proto declaring score.x of shape [2**26, 2] took the server from
    653 to 2,187 MB before the graph refused it; an int64 num_samples of 2**32 + 4 wrapped to
    4 and was answered; unknown inputs and malformed protos were UNKNOWN. Each is now
    INVALID_ARGUMENT naming the input, and the oversized proto is never decoded. So is a value
    field shorter than its declared shape (issue 41)."""
    import grpc

    sys.path.insert(0, os.path.join(repo_root, "serving"))
    import grpc_client
    import loopback

    decoded = []
    make_ndarray = tf.make_ndarray
    monkeypatch.setattr(tf, "make_ndarray", lambda p: decoded.append(p) or make_ndarray(p))
    huge = _proto(tf.float32, [2**26, 2], float_val=[0.5])
    assert len(huge.SerializeToString()) == 21

    def request(signature="sample", **inputs):
        r = grpc_client.sample_request("toy", 4, [0, 0], signature=signature)
        for k in list(r.inputs):
            if k not in inputs and signature != "sample":
                del r.inputs[k]
        for k, v in inputs.items():
            r.inputs[k].CopyFrom(v)
        return r

    bad = [
        (request("score", x=huge, sigma=tf.make_tensor_proto(np.ones(1, np.float32))),
         r"input 'x' must have shape \(None, 2\); a free dimension at most 1024, not \[67108864"),
        (request(num_samples=tf.make_tensor_proto(np.int64(2**32 + 4))),
         "input 'num_samples' must be int32: 4294967300 does not fit"),
        (request(num_samples=tf.make_tensor_proto(np.float32(4.5))), "4.5 does not fit"),
        (request(bogus=tf.make_tensor_proto(np.int32(1))), "unknown input.s. bogus"),
        (request(seed=_proto(tf.int32, [2], tensor_content=b"\x01\x02\x03")),
         "input 'seed' is malformed: 3 bytes of tensor_content"),
        (request(seed=tf.make_tensor_proto(np.int32([1, 2, 3]))),
         r"input 'seed' must have shape \(2,\), not \[3\]"),
        # issue 41: TensorFlow fills a short value field (a seed [2] with no values was
        # answered as seed [0, 0]); the service refuses it
        (request(seed=_proto(tf.int32, [2])),
         r"input 'seed' carries 0 value\(s\) in int_val for shape \[2\], which needs 2"),
        (request(seed=_proto(tf.int32, [2], int_val=[7])), "carries 1 value"),
        (request(num_samples=_proto(tf.int32, [])), "input 'num_samples' carries 0 value"),
    ]  # fmt: skip
    server, port = loopback.serve(toy_export[1])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for req, message in bad:
                with pytest.raises(grpc.RpcError) as err:
                    grpc_client.predict(channel, req)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
                assert re.search(message, err.value.details()), err.value.details()
            assert not [p for p in decoded if p.tensor_shape.dim[:1] == huge.tensor_shape.dim[:1]]
            out = grpc_client.predict(channel, request())
            assert out["samples"].shape == (4, 2)
    finally:
        server.stop(None)
