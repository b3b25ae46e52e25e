"""Every flag of run_train.py and run_sample.py (issue 29): an invalid value is one line naming
the flag, a non-zero exit and nothing written; run_sample.py's flags either take effect (a
continuous model's sampling grid) or are refused; --help lists them; Ctrl-C during start-up
is one line. The scripts' ``main`` runs in-process here (a subprocess costs seconds of
TensorFlow import each); three subprocesses check what only a real process shows."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags as absl_flags
from absl.testing import flagsaver

import tf_score.cli.definitions as F
from tf_score import api
from tf_score import config as C
from tf_score.cli import sample as run_sample
from tf_score.cli import train as run_train

A4AC31D = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "a4ac31d")
#: TensorFlow's own start-up lines on stderr (C++ logging), not the scripts'
_TF_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")
#: flags where -1 is a valid value (the mean of ln sigma; any finite power of sigma)
NEGATIVE_ALLOWED = {"p_mean", "anneal_power"}
#: invalid values beyond each type's own (out of range, non-finite, wrong type, empty)
SPECIFIC = {
    "sampler": ["nope"], "export_model_name": ["../x", "a/b"], "metrics": ["nope", "fid,"],
    "export_samplers": ["nope"], "devices": ["/gpu:0"], "tpu": ["local"],
    "sampler_options": ["x", "step_lr=abc", "nope=1", "step_lr=nan"],
    "plugins": ["no_such_module_xyz", "/nonexistent/plugin.py"],
    "posthoc_ema": ["x", "0", "0.3", "-0.1", "nan", "0.05,,0.1"], "posthoc_sigma_rel": ["0.3"],
}  # fmt: skip
#: run_sample.py's own flags with values only it can find invalid
SAMPLE_SPECIFIC = {"checkpoint": ["/nonexistent/ckpt-1"], "overview": ["/nonexistent"]}


def _flag_names() -> list[str]:
    names = {*C.field_names(), *F.COMMAND, *F.sampler_flags(), "seed"}
    return sorted(n for n in names if n in F.FLAGS)


def _invalid_values(name: str, sample: bool) -> list[str]:
    kind = F.FLAGS[name].flag_type()
    if kind == "int":
        values = ["x", "", "1.5", "-1"]
    elif kind == "float":
        values = ["nan", "inf", "-inf", "x", "", "-1"]
    elif kind == "bool":
        values = ["maybe"]
    elif kind.endswith("enum"):
        values = ["nope", ""]
    elif name in ("channel_mults", "hidden_units"):
        values = ["x", "0", "-1", "", "1,,2"]
    elif kind == "string":
        values = ["", " "]
    else:
        values = []
    values = [v for v in values if not (v == "-1" and name in NEGATIVE_ALLOWED)]
    return values + SPECIFIC.get(name, []) + (SAMPLE_SPECIFIC.get(name, []) if sample else [])


class _Reached(Exception):
    """The command got past its checks to the work."""


def _call(module, args, monkeypatch, capsys):
    """``module.main`` as its script runs it (the same argv, flags parsed by ``F.parse``):
    (exit code, stderr, stdout)."""
    argv = [f"{module.__name__}.py", *args]
    monkeypatch.setattr(sys, "argv", argv)
    with flagsaver.flagsaver():
        try:
            module.main(F.parse(argv))
            code = 0
        except SystemExit as e:
            code = e.code
    absl_flags.FLAGS.mark_as_parsed()
    out = capsys.readouterr()
    return code, out.err, out.out


def _stop_before_work(monkeypatch):
    def reached(*args, **kwargs):
        raise _Reached()

    for name in ("train", "sample", "evaluate", "export", "toy_overview"):
        monkeypatch.setattr(api, name, reached)


def _files(root) -> dict:
    return {
        os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
        for d, _, fs in os.walk(root)
        for f in fs
    }


def _one_line_naming(name, code, err) -> str | None:
    """What is wrong with a refusal (None: it is one line naming the flag, exit non-zero)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if code in (0, None):
        return f"exit code {code}"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"{len(lines)} lines: {err[-300:]!r}"
    return None if name in lines[0] else f"does not name the flag: {lines[0]!r}"


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """Copies of the a4ac31d toy workdirs: a continuous-sigma one and a level-conditioned one."""
    root = tmp_path_factory.mktemp("workdirs")
    for name in ("toy_edm", "toy_ncsn"):
        shutil.copytree(os.path.join(A4AC31D, name), root / name)
    return root


def _refusal(module, args, name, monkeypatch, capsys) -> str | None:
    """What is wrong with ``module``'s refusal of ``args`` (None: one line naming ``name``,
    a non-zero exit, before any work)."""
    try:
        code, err, _ = _call(module, args, monkeypatch, capsys)
    except _Reached:
        return "accepted, the work started"
    return _one_line_naming(name, code, err)


def test_every_invalid_flag_value_of_run_train_is_one_line_before_any_work(
    tmp_path, monkeypatch, capsys
):
    _stop_before_work(monkeypatch)
    workdir, bad = tmp_path / "w", []
    for name in _flag_names():
        for value in _invalid_values(name, sample=False):
            args = [f"--{name}={value}"] + ([] if name == "workdir" else [f"--workdir={workdir}"])
            why = _refusal(run_train, args, name, monkeypatch, capsys)
            if why or os.listdir(tmp_path):
                bad.append(f"--{name}={value!r}: {why or 'wrote ' + str(os.listdir(tmp_path))}")
                shutil.rmtree(workdir, ignore_errors=True)  # for the next
    assert not bad, "\n".join(bad)


def test_every_invalid_flag_value_of_run_sample_is_one_line_before_any_work(
    workdirs, tmp_path, monkeypatch, capsys
):
    _stop_before_work(monkeypatch)
    before, bad = _files(workdirs), []
    modes = {  # the flags are checked when sampling either kind of run, and with --overview
        "toy_edm": ("workdir", workdirs / "toy_edm"),
        "toy_ncsn": ("workdir", workdirs / "toy_ncsn"),
        "overview": ("overview", workdirs / "toy_edm"),
    }
    for mode, (where, path) in modes.items():
        for name in _flag_names():
            for value in _invalid_values(name, sample=where == "workdir"):
                args = [f"--{name}={value}"] + ([] if name == where else [f"--{where}={path}"])
                if name != "output_dir":
                    args.append(f"--output_dir={tmp_path / 'out'}")
                why = _refusal(run_sample, args, name, monkeypatch, capsys)
                if why or os.listdir(tmp_path) or _files(workdirs) != before:
                    bad.append(f"{mode} --{name}={value!r}: {why or 'wrote files'}")
                    shutil.rmtree(tmp_path / "out", ignore_errors=True)  # for the next
    assert not bad, "\n".join(bad)


def test_a_continuous_model_samples_on_the_grid_given(workdirs, tmp_path, monkeypatch, capsys):
    """--num_levels, --sigma_min, --rho, --schedule are a continuous-sigma model's sampling
    grid: the samples change (a4ac31d gave bit-identical ones); values are checked as the
    config checks them."""
    edm = workdirs / "toy_edm"
    samples, said = {}, {}
    for grid in ([], ["--num_levels=4"], ["--sigma_min=30"]):
        out = tmp_path / "_".join(grid or ["trained"])
        args = [f"--workdir={edm}", f"--output_dir={out}", "--num_samples=16", *grid]
        code, err, stdout = _call(run_sample, args, monkeypatch, capsys)
        assert code == 0, err[-2000:]
        with np.load(out / "samples.npz") as f:
            samples[tuple(grid)] = f["samples"]
        said[tuple(grid)] = stdout
    assert "sampling grid" not in said[()]
    assert said[("--num_levels=4",)].startswith(
        "sampling grid: karras, 4 levels, sigma 80 -> 0.01, rho 7 (trained run's: karras, 8 "
        "levels, sigma 80 -> 0.01, rho 7)"
    )
    assert said[("--sigma_min=30",)].startswith("sampling grid: karras, 8 levels, sigma 80 -> 30,")
    base = samples[()]
    assert not np.allclose(samples[("--num_levels=4",)], base)
    assert not np.allclose(samples[("--sigma_min=30",)], base)
    # stopped at sigma 30, the last denoising step returns E[x | x_30]: near the data's mean
    # (3, 3), far narrower than samples of the two modes at (-5, -5) and (5, 5)
    assert samples[("--sigma_min=30",)].std() < base.std() / 2
    for bad, message in [
        ("--rho=0", "error: rho must be > 0.0, got 0.0"),
        (
            "--sigma_min=90",
            "error: schedule=karras: sigma_max must be > sigma_min > 0 for a decreasing "
            "schedule, got sigma_max=80.0, sigma_min=90.0",
        ),
        ("--num_levels=1", "error: schedule=karras: a karras grid needs num_levels >= 2, got 1"),
    ]:
        out = tmp_path / "refused"
        args = [f"--workdir={edm}", f"--output_dir={out}", bad]
        code, err, _ = _call(run_sample, args, monkeypatch, capsys)
        assert code == 1 and err.strip() == message, err
        assert not out.exists()


def test_flags_that_cannot_apply_to_sampling_are_refused(workdirs, tmp_path, monkeypatch, capsys):
    """A level-conditioned network samples on its trained levels, and training settings do
    nothing for sampling: typed on the command line with another value than the run's, they
    are refused naming the flag (a4ac31d sampled and exited 0); a preset's (--flagfile) are
    left alone, and the run's own values pass."""
    ncsn, edm, out = workdirs / "toy_ncsn", workdirs / "toy_edm", tmp_path / "out"
    for workdir, flag, message in [
        (ncsn, "--num_levels=10", "--num_levels=10 does not apply: network=mlp samples on the "
         "noise levels it was trained on (num_levels=6)"),
        (ncsn, "--schedule=karras", "--schedule=karras does not apply: network=mlp"),
        (edm, "--sigma_data=1", "--sigma_data=1.0 does not apply to sampling: it is a training "
         "setting (this run's: 4.1)"),
        (edm, "--learning_rate=0.5", "--learning_rate=0.5 does not apply to sampling"),
        (ncsn, "--hidden_units=8,8", "--hidden_units=8,8 does not apply to sampling"),
        (ncsn, "--fid_samples=10", "--fid_samples=10 does not apply to sampling"),
        (ncsn, "--restart_from_scratch", "--restart_from_scratch=True does not apply"),
    ]:  # fmt: skip
        code, err, _ = _call(run_sample, [f"--workdir={workdir}", f"--output_dir={out}", flag],
                             monkeypatch, capsys)  # fmt: skip
        assert code == 1 and err.startswith(f"error: {message}"), err
        assert len(err.strip().splitlines()) == 1 and not out.exists()
    preset = tmp_path / "preset.cfg"
    preset.write_text("--learning_rate=0.5\n--num_levels=10\n--num_steps=7\n")
    for args in ([f"--flagfile={preset}"], ["--num_levels=6", "--hidden_units=32,32"]):
        args = [f"--workdir={ncsn}", f"--output_dir={out}", "--num_samples=8", *args]
        code, err, _ = _call(run_sample, args, monkeypatch, capsys)
        assert code == 0, err[-2000:]
        assert (out / "samples.npz").exists()
        shutil.rmtree(out)


def test_run_train_evaluate_of_an_image_model_is_refused_before_any_work(
    tmp_path, monkeypatch, capsys
):
    """run_train.py --evaluate evaluates a 2-D toy or a VAE after training; on an image score
    model or a classifier it is one line naming --evaluate, before anything is written."""
    _stop_before_work(monkeypatch)
    for extra in (["--network=resnet"], ["--model=classifier"]):
        args = ["--dataset=mnist", *extra, "--evaluate", f"--workdir={tmp_path / 'w'}"]
        why = _refusal(run_train, args, "--evaluate", monkeypatch, capsys)
        assert why is None and not os.listdir(tmp_path), (extra, why)
    preset = os.path.join(
        os.path.dirname(A4AC31D), "..", "..", "flags", "presets", "toy_mixture.cfg"
    )
    args = [f"--flagfile={preset}", "--evaluate", f"--workdir={tmp_path}/t"]
    assert _refusal(run_train, args, "--evaluate", monkeypatch, capsys) == (
        "accepted, the work started"
    )


def test_help_lists_the_flags_each_command_reads():
    """--help / --helpshort show the main module's key flags: the flags are defined in
    tf_score/cli/definitions.py, so without declaring them the scripts' help listed none."""
    F.declare_key_flags(F.train_flags(), "test_help_run_train")
    train_help = absl_flags.FLAGS.module_help("test_help_run_train")
    for name in ("workdir", "learning_rate", "num_steps", "sigma_max", "sampler", "export_dir"):
        assert f"--{name}:" in train_help, name
    assert "--output_dir:" not in train_help and "--overview:" not in train_help
    assert "--[no]evaluate:" in train_help  # the trained run's evaluation, in the same process
    assert set(F.train_flags()) >= set(F.sample_flags()) - set(F.SAMPLE_ONLY) - {"max_evaluations"}


def test_run_sample_help_lists_its_flags(repo_root):
    """The one real --helpshort (the main module is the script): its flags, not training's."""
    proc = subprocess.run(
        [sys.executable, "run_sample.py", "--helpshort"], cwd=repo_root, capture_output=True,
        text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    listed = set(re.findall(r"^  --(?:\[no\])?(\w+):", proc.stdout, re.M))
    assert {"workdir", "num_samples", "sampler", "step_lr", "num_levels", "sigma_max", "seed",
            "output_dir", "export_dir", "checkpoint"} <= listed, proc.stdout[-2000:]  # fmt: skip
    assert not listed & {"learning_rate", "num_steps", "batch_size", "restart_from_scratch"}


def test_a_refused_flag_is_one_line_from_the_real_script(repo_root, workdirs, tmp_path):
    """What the in-process calls check, once through the interpreter: absl's usage text
    (the docstring, and now every key flag's help) is not printed before the error."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "run_sample.py", f"--workdir={workdirs / 'toy_ncsn'}",
         f"--output_dir={out}", "--num_levels=5"],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not _TF_LOG.match(ln)]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: --num_levels=5 does not apply"), lines
    assert not out.exists()


def test_ctrl_c_before_the_training_loop_is_one_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C while run_train.py loads data or builds the model (before the loop, whose own
    handler saves): exit code 130 and one line, not a KeyboardInterrupt traceback; after the
    loop saved (the final summaries, the export), the line says training finished."""
    workdir = tmp_path / "w"
    args = ["--flagfile=flags/presets/toy_mixture.cfg", f"--workdir={workdir}"]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "train", interrupted)
    code, err, _ = _call(run_train, args, monkeypatch, capsys)
    assert code == 130
    assert err.strip() == (
        "interrupted during start-up, before any training step; no checkpoint written"
    )
    assert not workdir.exists()

    def trained_then_interrupted(cfg, workdir, *a, **k):
        os.makedirs(os.path.join(workdir, "checkpoints"))
        for name in ("ckpt-7.index", "ckpt-7.data-00000-of-00001"):  # a complete one's files
            open(os.path.join(workdir, "checkpoints", name), "w").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "train", trained_then_interrupted)
    code, err, _ = _call(run_train, args, monkeypatch, capsys)
    assert code == 130 and err.startswith("interrupted after training to step 7"), err


def test_ctrl_c_while_tensorflow_loads_is_one_line(repo_root, tmp_path):
    """SIGINT a second after start, inside `import tensorflow`: a4ac31d printed a 50-90 line
    KeyboardInterrupt traceback from the imports."""
    workdir = tmp_path / "w"
    proc = subprocess.Popen(
        [sys.executable, "run_train.py", "--flagfile=flags/presets/toy_mixture.cfg",
         f"--workdir={workdir}"],
        cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = [ln for ln in err.splitlines() if ln.strip() and not _TF_LOG.match(ln)]
    assert proc.returncode == 130, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("interrupted during start-up"), err[-3000:]
    assert not workdir.exists()


def test_a_plugin_whose_own_import_fails_is_not_reported_missing(tmp_path, monkeypatch):
    """--plugins=tfs_plugin_xyz exists but imports a missing module tfs_plugin: that is the
    plugin's ModuleNotFoundError (its traceback), not "no module 'tfs_plugin_xyz'" (the old
    prefix test took 'tfs_plugin' for the plugin); a plugin that does not exist is the
    one-line ConfigError."""
    from tf_score import config

    (tmp_path / "tfs_plugin_xyz.py").write_text("import tfs_plugin  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with flagsaver.flagsaver(plugins=["tfs_plugin_xyz"]):
        with pytest.raises(ModuleNotFoundError, match="tfs_plugin'"):
            F.load_plugins()
    with flagsaver.flagsaver(plugins=["tfs_plugin_nowhere"]):
        with pytest.raises(config.ConfigError, match="no module 'tfs_plugin_nowhere'"):
            F.load_plugins()
