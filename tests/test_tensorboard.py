"""TensorBoard reads what the training loop writes: a real server on loopback, HTTP data API."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tf_score import config
from tf_score.config import TrainConfig
from tf_score.families import score_model
from tf_score.training import loop


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


@pytest.mark.slow
def test_tensorboard_serves_the_scalars_and_images(tmp_path):
    bundle = score_model.toy_bundle(
        config.from_flat(dict(hidden_units=(16,), n_steps_each=2, denoise=False))
    )
    cfg = TrainConfig(
        num_steps=40,
        batch_size=32,
        log_every=20,
        checkpoint_every=40,
        sample_every=40,
    )
    loop.train(bundle, cfg, str(tmp_path))
    port = _free_port()
    tb = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    proc = subprocess.Popen(
        [
            tb,
            f"--logdir={tmp_path / 'tb'}",
            "--host=127.0.0.1",
            f"--port={port}",
            "--load_fast=false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        tags = None
        while time.time() < deadline:
            try:
                tags = json.loads(_get(f"{base}/data/plugin/scalars/tags"))
                if "loss" in tags.get(".", {}):  # up, and done loading the run
                    break
            except OSError:  # not listening yet
                pass
            time.sleep(1)
        assert tags and "." in tags, f"tensorboard did not serve scalars: {tags}"
        scalar_tags = set(tags["."])
        for tag in [
            "loss",
            "steps_per_sec",
            "score/loss",
            "score/learning_rate",
            "score/grad_norm",
            "score/loss_per_level/00",
            "score/loss_per_level/09",
        ]:
            assert tag in scalar_tags, (tag, sorted(scalar_tags))
        points = json.loads(_get(f"{base}/data/plugin/scalars/scalars?run=.&tag=loss"))
        assert [p[1] for p in points] == [20, 40]
        images = json.loads(_get(f"{base}/data/plugin/images/tags"))
        assert "samples/annealed_langevin" in images["."], images
        listing = json.loads(
            _get(f"{base}/data/plugin/images/images?run=.&tag=samples/annealed_langevin&sample=0")
        )
        assert listing and listing[-1]["step"] == 40
        png = _get(f"{base}/data/plugin/images/individualImage?{listing[-1]['query']}")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
