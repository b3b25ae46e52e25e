"""One throughput figure of the official PyTorch NCSN (ermongroup/ncsn), for run_bench.py.

    python benchmarks/torch_ncsn.py --ncsn_repo=/tmp/ncsn --kind=train --precision=float32 \
        --batch=128 [--repeats=3]

Runs in a Python environment that has PyTorch (not tf_score's: ``pip install torch==2.13.0
numpy`` in a separate venv) on a checkout of https://github.com/ermongroup/ncsn (only its
``models/`` and ``losses/`` are imported). ``run_bench.py --torch_python=... --ncsn_repo=...``
calls it per figure, interleaved with tf_score's same figure, so the two are compared on the
same machine minutes apart. It uses argparse, not absl: the PyTorch environment has none of
tf_score's requirements.

The workloads are those of run_bench.py on the MNIST configuration (28 x 28 x 1, ngf 64, 10
noise levels from 1 to 0.01): a training call is ``steps`` x (forward, the official
``anneal_dsm_score_estimation`` loss, backward, Adam step) on random images; a sampling call
is 2 Langevin steps of every chain at one level under ``torch.no_grad``. bfloat16 is
``torch.autocast("cpu", torch.bfloat16)`` around the network. A figure is the median of
``--repeats`` timed calls after a warm-up call, followed by PyTorch's 4096 x 4096 matmul
rate in the same process. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
import types

from timing import timed  # beside this script

SAMPLE_STEPS = 2  # Langevin steps per chain in a sampling call, as run_bench's RefineNet figure


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ncsn_repo", required=True, help="Checkout of ermongroup/ncsn.")
    p.add_argument("--kind", choices=["train", "sample", "matmul"], required=True)
    p.add_argument("--precision", choices=["float32", "mixed_bfloat16"], default="float32")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        p.error(f"--batch and --repeats must be >= 1, got {args.batch} and {args.repeats}")
    if args.kind != "matmul" and not os.path.isfile(
        os.path.join(args.ncsn_repo, "models", "cond_refinenet_dilated.py")
    ):
        p.error(f"--ncsn_repo={args.ncsn_repo!r} has no models/cond_refinenet_dilated.py")
    return args


def _network(ncsn_repo, torch):
    sys.path.insert(0, os.path.abspath(ncsn_repo))
    from models.cond_refinenet_dilated import CondRefineNetDilated

    config = types.SimpleNamespace(
        data=types.SimpleNamespace(logit_transform=False, image_size=28, channels=1),
        model=types.SimpleNamespace(ngf=64, num_classes=10),
    )
    torch.manual_seed(0)
    return CondRefineNetDilated(config)


def matmul_figure(torch, bf16, repeats, n=4096):
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    seconds, _ = timed(lambda: torch.mm(a, b), max(repeats, 5))
    return {"gflops": 2 * n**3 / seconds / 1e9, "seconds": seconds, "n": n}


def train_figure(torch, net, bf16, batch, repeats):
    from losses.dsm import anneal_dsm_score_estimation

    sigmas = torch.tensor([math.exp(math.log(1.0) + i * math.log(0.01) / 9) for i in range(10)])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,))

    def steps(n):
        for _ in range(n):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = anneal_dsm_score_estimation(net, x, labels, sigmas, 2.0)
            opt.zero_grad()
            loss.float().backward()
            opt.step()

    t0 = time.perf_counter()
    steps(1)  # warm-up
    n = int(min(50, max(1, round(2.0 / (time.perf_counter() - t0)))))
    seconds, _ = timed(lambda: steps(n), repeats)
    return {"steps_per_call": n, "images_per_s": batch * n / seconds, "seconds_per_call": seconds}


def sample_figure(torch, net, bf16, batch, repeats):
    x0 = torch.rand(batch, 1, 28, 28)
    labels = torch.full((batch,), 9, dtype=torch.long)
    step_size = 2e-5

    @torch.no_grad()
    def call():
        x = x0.clone()
        for _ in range(SAMPLE_STEPS):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                score = net(x, labels)
            x = x + step_size * score.float() + math.sqrt(2 * step_size) * torch.randn_like(x)
        return x

    seconds, _ = timed(call, repeats)
    return {
        "evals_per_image": SAMPLE_STEPS,
        "evals_per_s": batch * SAMPLE_STEPS / seconds,
        "images_per_s": batch / seconds,
        "seconds_per_call": seconds,
    }


def main(argv=None):
    args = _args(argv)
    import torch

    bf16 = args.precision == "mixed_bfloat16"
    out = {
        "implementation": "ermongroup/ncsn CondRefineNetDilated (MNIST: ngf 64, 10 levels)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "kind": args.kind,
        "batch": args.batch,
    }
    if args.kind == "matmul":
        out.update(matmul_figure(torch, bf16, args.repeats))
    else:
        net = _network(args.ncsn_repo, torch)
        out["params"] = sum(p.numel() for p in net.parameters())
        figure = train_figure if args.kind == "train" else sample_figure
        out.update(figure(torch, net, bf16, args.batch, args.repeats))
    print_figure(out, torch, bf16, args.kind, args.repeats)


def print_figure(out: dict, torch, bf16: bool, kind: str, repeats: int) -> None:
    """Print a twin's figure as one JSON line, with its peak RSS and (a workload's) the matmul
    rate measured right after it: the machine's speed of the same minute, as run_bench.py."""
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind != "matmul":
        out["matmul_gflops"] = matmul_figure(torch, bf16, repeats)["gflops"]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
