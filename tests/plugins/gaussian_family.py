"""A model-family plugin as a user writes one: its ``Family`` entry, registered when the module
is imported (``run_train.py --plugins=THIS_FILE --model=test_gaussian --network=moments``).

The family fits one Gaussian to a 2-D toy: training draws ``num_steps`` x ``batch_size`` points
and keeps their mean and covariance (gaussian.npz); sampling draws mean + L z (L L^T the
covariance); the export serves ``sample(num_samples, seed)`` with the same draws."""

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf

from tf_score import atomic, data
from tf_score.config import ConfigError
from tf_score.families import registry, workdir
from tf_score.families.run import Generated, Run

FILE = "gaussian.npz"


@dataclasses.dataclass
class Fitted:
    """What training gave."""

    mean: np.ndarray
    cov: np.ndarray
    examples: int

    def summary(self) -> str:
        return f"fitted a Gaussian to {self.examples} points: mean {np.round(self.mean, 3)}"


def check(cfg) -> None:
    if cfg.is_image or cfg.network.network != "moments":
        raise ConfigError("model=test_gaussian takes a 2-D toy and network=moments")


def train(cfg, wd, strategy, progress, restart):
    workdir.check_resume(wd, cfg)
    n = cfg.train.num_steps * cfg.train.batch_size
    x = data.get_toy(cfg.data.dataset).sample(n, seed=[cfg.seed, 0]).numpy().astype(np.float64)
    fitted = Fitted(x.mean(0), np.cov(x.T), n)
    with workdir.held(wd, chief=True):
        workdir.write_config(wd, cfg.replace(data={"data_shape": (2,)}))
        atomic.save_npz(os.path.join(wd, FILE), mean=fitted.mean, cov=fitted.cov)
    return fitted


def load(wd, cfg, checkpoint, posthoc) -> Run:
    with np.load(os.path.join(wd, FILE)) as f:
        chol = np.linalg.cholesky(f["cov"]).astype(np.float32)
        return Run(wd, cfg, {"mean": f["mean"].astype(np.float32), "chol": chol}, step=1)


def draw(mean, chol, num_samples, seed):
    """mean + L z for ``num_samples`` z ~ N(0, I) seeded by the pair ``seed``."""
    z = tf.random.stateless_normal(tf.stack([num_samples, 2]), seed, alg="philox")
    return mean + tf.matmul(z, chol, transpose_b=True)


def sample(run, out_dir, seed, **_):
    t0, n = time.time(), run.config.evaluation.num_samples
    x = draw(run.models["mean"], run.models["chol"], n, tf.constant([seed, 0])).numpy()
    atomic.save_npz(os.path.join(out_dir, "samples.npz"), samples=x)
    return Generated(x, 0, time.time() - t0)


def export(run, path, samplers, max_samples, max_evaluations):
    module = tf.Module()
    module.mean, module.chol = tf.Variable(run.models["mean"]), tf.Variable(run.models["chol"])

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="num_samples"),
                                  tf.TensorSpec([2], tf.int32, name="seed")])  # fmt: skip
    def serve(num_samples, seed):
        ok = tf.debugging.assert_less_equal(num_samples, max_samples)
        with tf.control_dependencies([ok]):
            return {"samples": draw(module.mean, module.chol, num_samples, seed)}

    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    return path


ENTRY = registry.register(
    registry.Family(
        "test_gaussian", train=train, load=load,
        requests=lambda cfg: frozenset({"samples", "export"}), check=check, sample=sample,
        export=export, distributed=False,
    ),
    replace=True,
)  # fmt: skip
