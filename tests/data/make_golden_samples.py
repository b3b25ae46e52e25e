"""Write ``golden_samples.npz`` for ``tests/test_golden_samples.py``: small, randomly initialised
score networks (the conditional ResNet and the EDM U-Net), their weights as a TF checkpoint,
and the samples every image sampler draws from them with fixed seeds. Run once with the
library of a reference commit first on ``sys.path``::

    git archive 7c2a407 | tar -x -C /tmp/base
    cd /tmp/base && python /path/to/tests/data/make_golden_samples.py /path/to/tests/data

so that later speed work can be checked to leave float32 samples unchanged. (``draw_all``
now uses today's API; the recorded file is 7c2a407's.)
"""

import os
import sys

import keras
import numpy as np
import tensorflow as tf

if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())  # the checkout being recorded

from tf_score import sampling
from tf_score.networks import contract
from tf_score.networks.denoisers import EDMUNet
from tf_score.networks.resnet import ConditionalResNet

SHAPE = (16, 16, 1)
BATCH = 8
SIGMAS = np.geomspace(1.0, 0.01, 6).astype(np.float32)
EDM_SIGMAS = (np.linspace(80.0 ** (1 / 7), 0.002 ** (1 / 7), 6) ** 7).astype(np.float32)

#: (network, sampler, options): every registered image sampler but the adaptive ODE
CASES = [
    ("resnet", "annealed_langevin", dict(step_lr=5e-5, n_steps_each=2, denoise=True)),
    ("resnet", "langevin", dict(langevin_step_size=2e-5, langevin_steps=3)),
    ("resnet", "consistent_annealed", dict(cas_eta=0.7, denoise=True)),
    ("resnet", "predictor_corrector", dict(snr=0.16, n_corrector=1, denoise=True)),
    ("unet", "heun", dict(heun_steps=4)),
    ("unet", "edm", dict(s_churn=10.0)),
]


def networks():
    keras.utils.set_random_seed(0)
    resnet = ConditionalResNet(SHAPE, SIGMAS, ngf=8, channel_mults=(1, 2), num_blocks=1)
    resnet(tf.zeros([1, *SHAPE]), tf.zeros([1], tf.int32))
    unet = EDMUNet(SHAPE, ngf=8, channel_mults=(1, 2), num_blocks=1, sigma_data=0.5)
    unet(tf.zeros([1, *SHAPE]), tf.ones([1]))
    return {"resnet": resnet, "unet": unet}


def draw_all(nets) -> dict:
    """Every case's samples through today's library (the model contract, sampling.draw)."""
    models = {
        "resnet": (contract.LevelScoreModel(nets["resnet"], SIGMAS), SIGMAS),
        "unet": (nets["unet"], EDM_SIGMAS),
    }
    space = sampling.SampleSpace(SHAPE, (0.0, 1.0), None)
    out = {}
    for net, name, options in CASES:
        model, sigmas = models[net]
        sample = sampling.draw(
            name, model, sigmas, BATCH, tf.constant([3, 0]), space, seeding="batch", **options
        )  # recorded before per-sample seeds
        out[f"{net}/{name}"] = sample.samples.numpy()
    return out


def main(outdir):
    nets = networks()
    tf.train.Checkpoint(**nets).write(os.path.join(outdir, "golden_nets"))
    np.savez_compressed(os.path.join(outdir, "golden_samples.npz"), **draw_all(nets))


if __name__ == "__main__":
    main(sys.argv[1])
