"""Test setup: quiet TF, two logical CPU devices (for distribution tests), absl flags parsed."""

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
import tensorflow as tf
from absl import flags as absl_flags

# Must run before TensorFlow initialises its devices.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import tf_score.cli.definitions  # noqa: E402, F401  (defines every flag once)

absl_flags.FLAGS.mark_as_parsed()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has_mnist(data_dir: str) -> bool:
    return os.path.isdir(os.path.join(data_dir, "mnist"))


def _find_mnist() -> tuple[str, str | None]:
    """(tfds data_dir of real MNIST, None) or (a data_dir, why it is not there). Looked for in
    TF_SCORE_TEST_TFDS_DIR, then ../shared/data/tfds beside the checkout (this project's CI),
    then tfds' own data directory, where TF_SCORE_TEST_DOWNLOAD=1 downloads it once."""
    explicit = os.environ.get("TF_SCORE_TEST_TFDS_DIR")
    if explicit:
        if _has_mnist(explicit):
            return explicit, None
        return explicit, f"TF_SCORE_TEST_TFDS_DIR={explicit} holds no prepared mnist"
    shared = os.path.join(os.path.dirname(REPO), "shared", "data", "tfds")
    if _has_mnist(shared):
        return shared, None
    default = os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
    if _has_mnist(default):
        return default, None
    if os.environ.get("TF_SCORE_TEST_DOWNLOAD") == "1":
        import tensorflow_datasets as tfds

        tfds.builder("mnist", data_dir=default).download_and_prepare()
        return default, None
    return default, "no prepared mnist in TF_SCORE_TEST_TFDS_DIR, ../shared/data/tfds or " + default


MNIST_DATA_DIR, _MNIST_MISSING = _find_mnist()


@functools.cache
def _mnist_helpers(module) -> frozenset[str]:
    """MNIST_DATA_DIR and the names of the module's functions (fixtures included) that
    reach it, however deep the chain of helpers; once per test module."""
    import inspect

    sources = {}
    for name, obj in vars(module).items():
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            try:
                sources[name] = inspect.getsource(obj)
            except (OSError, TypeError):
                pass
    helpers, grew = {"MNIST_DATA_DIR"}, True
    while grew:  # helpers of helpers, to a fixed point
        new = {
            n for n, src in sources.items() if n not in helpers and any(h in src for h in helpers)
        }
        helpers |= new
        grew = bool(new)
    return frozenset(helpers)


def _reads_mnist(item) -> bool:
    """Whether a test uses MNIST_DATA_DIR: in its own source, or through functions or
    fixtures of its module that do."""
    import inspect

    module = getattr(item, "module", None)
    fn = getattr(item, "function", None)
    if module is None or fn is None:
        return False
    helpers = _mnist_helpers(module)
    source = inspect.getsource(fn)
    return any(h in source for h in helpers) or bool(helpers & set(item.fixturenames))


def pytest_runtest_setup(item):
    """A test that reads real MNIST fails at once, with one message, when it is missing."""
    if _MNIST_MISSING and _reads_mnist(item):
        pytest.fail(
            f"real MNIST is needed: {_MNIST_MISSING}. Point TF_SCORE_TEST_TFDS_DIR at a tfds "
            "data_dir with mnist prepared, or run the tests once with TF_SCORE_TEST_DOWNLOAD=1 "
            "where the network allows (it downloads to tfds' data directory).",
            pytrace=False,
        )


@pytest.fixture
def repo_root():
    return REPO


@pytest.fixture
def run_cli():
    """``run_cli(script, *args, env=None)``: one of the command lines in a fresh process from
    the repository root (``env``: the whole environment; default: this one), output kept."""
    import subprocess
    import sys

    def run(script, *args, env=None, timeout=300):
        return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=timeout, env=env)  # fmt: skip

    return run
