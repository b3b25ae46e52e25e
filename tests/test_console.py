"""The command lines' console: tf_score's own lines, TensorFlow's logging only when asked."""

import os

from tf_score.cli import console

BANNER = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796620800.572734   25311 port.cc:153] oneDNN custom operations are on.",
    b"I0000 00:00:1796620800.651067   25311 cpu_feature_guard.cc:227] This TensorFlow binary "
    b"is optimized to use available CPU instructions in performance-critical operations.",
    b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild",
    b"E0000 00:00:1796620802.611372   25311 cuda_platform.cc:52] failed call to cuInit: "
    b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    b"E0000 00:00:1796620804.118460   25311 util.cc:131] oneDNN supports DT_INT32 only on "
    b"platforms with AVX-512. Falling back to the default Eigen-based implementation.",
    b"W1207 05:20:07.462493 140183913749376 some_op.cc:12] a C++ warning",
]


def test_the_filter_drops_tensorflows_noise_and_keeps_real_errors_and_our_lines():
    for line in BANNER:
        assert console.from_tensorflow(line) and not console._shown(line), line
    real = b"E1207 05:20:07.462493 140183913749376 bfc_allocator.cc:485] Allocator ran out"
    fatal = b"F1207 05:20:07.462493 140183913749376 check.cc:1] Check failed: x == y"
    assert console._shown(real) and console._shown(fatal)
    for ours in (b"saved checkpoint runs/toy/checkpoints/ckpt-300", b"", b"  0%|    | 0/300"):
        assert console._shown(ours) and not console.from_tensorflow(ours)


def test_verbosity_is_read_from_the_command_line_before_absl_parses_it():
    assert console.requested_verbosity(["run_train.py", "--workdir=w"]) == -1
    assert console.requested_verbosity(["run_train.py", "-v", "0"]) == 0
    assert console.requested_verbosity(["run_train.py", "--verbosity=1"]) == 1
    assert console.requested_verbosity(["run_train.py", "--verbosity", "x"]) == -1


def test_a_cli_training_prints_tf_scores_lines_only(run_cli, tmp_path):
    """With no verbosity flag and no TF_CPP_MIN_LOG_LEVEL set, a training with checkpoints,
    progress bar and export prints no line of TensorFlow's C++ logger, its banner or absl's
    INFO format; tf_score's own lines (the checkpoint saved, the summary) are there, plain.
    (test_pretrained.py checks that --verbosity=0 shows TensorFlow's logging again.)"""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    workdir = str(tmp_path / "toy")
    proc = run_cli("run_train.py", f"--workdir={workdir}", "--flagfile=flags/presets/toy_edm.cfg",
                   "--num_steps=200", "--checkpoint_every=100", "--sample_every=0",
                   f"--export_dir={tmp_path / 'export'}", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [part for line in (proc.stdout + proc.stderr).splitlines() for part in line.split("\r")]
    assert [line for line in lines if console.from_tensorflow(line.encode())] == []
    assert [line for line in lines if line[:1] in "IWEF" and line[1:5].isdigit()] == []  # absl
    assert f"saved checkpoint {workdir}/checkpoints/ckpt-100" in lines
    assert any("200/200" in line and "step/s" in line for line in lines)  # the bar, with rate
    assert "trained to step 200" in proc.stdout
