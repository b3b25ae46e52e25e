"""Test setup: quiet TF, two logical CPU devices (for distribution tests), absl flags parsed."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
import tensorflow as tf
from absl import flags as absl_flags

# Must run before TensorFlow initialises its devices.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import flags.definitions  # noqa: E402, F401  (defines every flag once)

absl_flags.FLAGS.mark_as_parsed()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Real MNIST as a prepared tfds data_dir: ../shared/data/tfds beside the checkout (as in CI),
# or wherever TF_SCORE_TEST_TFDS_DIR points.
MNIST_DATA_DIR = os.environ.get(
    "TF_SCORE_TEST_TFDS_DIR", os.path.join(os.path.dirname(REPO), "shared", "data", "tfds")
)


@pytest.fixture
def repo_root():
    return REPO
