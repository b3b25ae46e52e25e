"""A PyTorch twin of tf_score's EDM U-Net denoiser on the 90-minute AVX2 MNIST presets, timed as
torch_ncsn.py times the official NCSN: one throughput figure, for run_bench.py-style rounds.

    python benchmarks/torch_edm.py --kind=train --precision=float32 [--batch=64] [--repeats=3] \
        [--preset=mnist_edm_avx2_90] [--compile] [--channels_last] [--adam=default]
    python benchmarks/torch_edm.py --kind=sample --precision=mixed_bfloat16 [--batch=500]
    python benchmarks/torch_edm.py --kind=matmul --precision=float32

Runs in a Python environment that has PyTorch and NumPy (not tf_score's: argparse, not absl).
The network is ``tf_score.networks.denoisers.EDMUNet`` as ``flags/presets/mnist_edm_avx2_90.cfg``
builds it (its --flagfile chain: -> mnist_edm_cpu90_m123 -> mnist_edm_cpu90_ngf32 ->
mnist_edm_cpu90): ngf 32, channels 32/64/96, 2 FiLM residual blocks per stage and side, a
128-wide noise embedding, EDM preconditioning in the network's scale y = 2x - 1 (sigma_data
0.5); ``--preset=mnist_edm_cond_avx2_90`` adds the 11-row class embedding (10 digits and "no
label") and label dropout 0.1. Both have tf_score's parameter count to the unit (1,304,609 and
1,306,017); ``--check`` compares outputs and gradients with tf_score's on weights it exported.

A training call is ``steps`` x (lognormal sigmas ln(2 sigma) ~ N(-0.8, 1.6^2), forward, EDM-
weighted loss averaged over the batch, backward, the NaN guard on the loss and the global
gradient norm, Adam (beta_1 0.9, Keras' beta_2 0.999 and epsilon 1e-7) at the warm-up-cosine
rate of tf_score's ``WarmupCosine``, EMA update with tf_score's decay min(0.9995, (1+t)/(10+t)))
on batches of dequantised random uint8 images, as ``TrainStep`` runs them; a sampling call is the
preset's deterministic Heun sampler (10 of the 18 Karras levels, then 0: 19 evaluations) of the
EMA denoiser under ``torch.no_grad``. bfloat16 is ``torch.autocast("cpu", torch.bfloat16)``
around the network (its preconditioning, loss and GroupNorm statistics stay float32, as
tf_score's mixed_bfloat16 policy keeps them). ``--compile`` wraps the denoiser in
``torch.compile`` (its backward too); its compile time is reported apart. A figure is the
median of ``--repeats`` timed calls after warm-up calls, followed by PyTorch's 4096 x 4096
matmul rate in the same process. Prints one JSON line.

Checking the twin against tf_score (a few seconds each, batch 2 by default):

    .venv/bin/python benchmarks/torch_edm.py --dump=/tmp/edm_tf.npz [--preset=...]
    /path/to/torch/python benchmarks/torch_edm.py --check=/tmp/edm_tf.npz

``--dump`` (run by tf_score's Python, from the repository) builds the preset's network with
the library, sets every weight to a random value (so that biases, GroupNorm's beta and gamma
are not their constant initial values), and writes an .npz of the weights keyed by Keras
variable path ("w/" + path without the model's name; the end convolution, which Keras names
"conv2d_N", as "end"), one batch of inputs with the network's raw output F, the denoiser's
output D, the per-example EDM loss and its gradient ("g/" + path), and the parsed preset.
``--check`` loads them into the twin and compares; it exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

from timing import timed  # beside this script
from torch_ncsn import matmul_figure, print_figure  # the same matmul rate (no torch import)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_SHAPE = (28, 28, 1)  # MNIST, NHWC as tf_score sees it (the twin is NCHW)
DATA_SCALE, DATA_SHIFT = 2.0, -1.0  # y = 2x - 1 (tf_score.networks.registry.data_scale)
GN_EPSILON = 1e-3  # tf_score's GroupNorm (that of keras.layers.GroupNormalization)
DATA_MEAN = 0.5  # sampling starts at the mean + sigma_max z; run_bench's random images' mean

# The settings of the presets the twin mirrors, as their --flagfile chains resolve them (and
# the library's defaults for what they leave unset). ``--check`` compares them with the
# ExperimentConfig tf_score parsed from the same preset (``--dump`` records it).
_UNCONDITIONAL = {
    "network": "edm_unet",
    "ngf": 32,
    "channel_mults": [1, 2, 3],
    "num_res_blocks": 2,
    "num_classes": 0,
    "label_dropout": 0.1,  # the library's default; unused without classes
    "loss": "edm",
    "parameterization": "edm",
    "sigma_data": 0.5,
    "sigma_dist": "lognormal",
    "p_mean": -0.8,
    "p_std": 1.6,
    "sigma_max": 17.0,
    "sigma_min": 0.002,
    "num_levels": 18,
    "schedule": "karras",
    "rho": 7.0,
    "optimizer": "adam",
    "learning_rate": 3e-3,
    "lr_schedule": "cosine",
    "lr_warmup_steps": 500,
    "grad_clip_norm": 0.0,
    "num_steps": 13000,
    "batch_size": 64,
    "grad_accum_steps": 1,
    "ema_rate": 0.9995,
    "ema_warmup": True,
    "sampler": "heun",
    "heun_steps": 10,
}
PRESETS = {
    "mnist_edm_avx2_90": _UNCONDITIONAL,
    "mnist_edm_cond_avx2_90": {**_UNCONDITIONAL, "num_classes": 10},
}
#: Keras Adam's defaults that tf_score keeps (optimizers.make_optimizer sets beta_1 only)
ADAM_BETAS, ADAM_EPSILON = (0.9, 0.999), 1e-7


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=["train", "sample", "matmul"], default="train")
    p.add_argument("--precision", choices=["float32", "mixed_bfloat16"], default="float32")
    p.add_argument("--preset", choices=sorted(PRESETS), default="mnist_edm_avx2_90")
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="Default: the preset's 64 to train, 500 to sample, 2 for --dump.",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser.")
    p.add_argument("--channels_last", action="store_true", help="NHWC memory format.")
    p.add_argument(
        "--adam",
        choices=["default", "foreach", "fused"],
        default="default",
        help="torch.optim.Adam's implementation (default: PyTorch's choice).",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dump", metavar="NPZ", help="(tf_score's Python) export weights and a batch.")
    p.add_argument("--check", metavar="NPZ", help="Compare the twin with a --dump file.")
    args = p.parse_args(argv)
    if args.batch is None:
        args.batch = 2 if args.dump else 500 if args.kind == "sample" else 64
    if args.batch < 1 or args.repeats < 1:
        p.error(f"--batch and --repeats must be >= 1, got {args.batch} and {args.repeats}")
    if args.dump and args.check:
        p.error("--dump runs in tf_score's Python, --check in PyTorch's: one at a time")
    return args


# ---------------------------------------------------------------------------- the twin


def _net():
    """The twin's module (imports torch: the --dump mode runs without it)."""
    import torch_edm_net  # beside this script

    return torch_edm_net


def build_network(torch, preset: str, seed: int = 0):
    """The twin of ``preset``'s network, initialised as Keras initialises tf_score's (Glorot-
    uniform kernels, zero biases, GroupNorm gamma 1 and beta 0, Embedding U(-0.05, 0.05))."""
    cfg = PRESETS[preset]
    torch.manual_seed(seed)
    net = _net().EDMUNet(cfg["ngf"], cfg["channel_mults"], cfg["num_res_blocks"],
                          cfg["num_classes"], cfg["sigma_data"])  # fmt: skip
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                torch.nn.init.xavier_uniform_(m.weight)
                torch.nn.init.zeros_(m.bias)
            elif isinstance(m, torch.nn.Embedding):
                torch.nn.init.uniform_(m.weight, -0.05, 0.05)
    return net


def num_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------- training


def per_example_loss(torch, net, x, sigma, noise, labels, bf16):
    """tf_score's losses.denoising_loss: lambda(s) ||D(x + sigma n; sigma) - x||^2 in the
    network's scale (s = 2 sigma), lambda = (s^2 + sd^2) / (s sd)^2, per example [B]."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        d = net(x + sigma.view(-1, 1, 1, 1) * noise, sigma, labels)
    err = (DATA_SCALE * (d.float() - x)).square().flatten(1).sum(1)
    s, sd = DATA_SCALE * sigma, net_sigma_data(net)
    return (s * s + sd * sd) / (s * sd).square() * err


def net_sigma_data(net) -> float:
    return getattr(net, "_orig_mod", net).sigma_data  # through torch.compile's wrapper


def learning_rate(cfg: dict, t: int) -> float:
    """tf_score's WarmupCosine at 0-based update t: the peak times a linear ramp over the
    warm-up, times the half-cosine to 0 at num_steps."""
    w = max(cfg["lr_warmup_steps"], 1)
    ramp = min((t + 1.0) / w, 1.0) if cfg["lr_warmup_steps"] else 1.0
    span = max(cfg["num_steps"] - cfg["lr_warmup_steps"], 1)
    frac = min(max((t - cfg["lr_warmup_steps"]) / span, 0.0), 1.0)
    return cfg["learning_rate"] * ramp * 0.5 * (1.0 + math.cos(math.pi * frac))


def ema_decay(cfg: dict, step: int) -> float:
    """tf_score's EMA decay at 1-based step: min(rate, (1 + t) / (10 + t)) with the warm-up."""
    rate = cfg["ema_rate"]
    return min(rate, (1.0 + step) / (10.0 + step)) if cfg["ema_warmup"] else rate


class Trainer:
    """tf_score's TrainStep on one device: live and EMA networks, Adam, the step counter."""

    def __init__(self, torch, preset, batch, bf16, compile_=False, channels_last=False,
                 adam="default", seed=0):  # fmt: skip
        self.torch, self.cfg, self.batch, self.bf16 = torch, PRESETS[preset], batch, bf16
        self.net = build_network(torch, preset, seed)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.memory = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory)
        self.ema.to(memory_format=self.memory)
        self.params = list(self.net.parameters())
        self.ema_params = list(self.ema.parameters())
        kwargs = {"foreach": adam == "foreach", "fused": adam == "fused"}
        kwargs = {k: v for k, v in kwargs.items() if v}
        self.opt = torch.optim.Adam(self.params, lr=learning_rate(self.cfg, 0),
                                    betas=ADAM_BETAS, eps=ADAM_EPSILON, **kwargs)  # fmt: skip
        self.model = torch.compile(self.net) if compile_ else self.net
        self.updates = 0  # the optimizer's iterations (applied updates)
        self.step = 0  # the last step taken (1-based)
        g = torch.Generator().manual_seed(seed + 1)
        n, c = max(2, -(-512 // batch)), DATA_SHAPE[-1]
        # uint8 pixel values of random images, a batch per step in turn (run_bench's 512)
        self.pixels = torch.randint(0, 256, (n, batch, c, *DATA_SHAPE[:2]), generator=g).float()

    def batch_at(self, step):
        """Dequantised images (pixel + u) / 256 and (a conditional model's) labels with label
        dropout: each replaced by "no label" with probability label_dropout."""
        torch, cfg = self.torch, self.cfg
        pix = self.pixels[step % self.pixels.shape[0]]
        x = ((pix + torch.rand_like(pix)) / 256.0).contiguous(memory_format=self.memory)
        labels = None
        if cfg["num_classes"]:
            labels = torch.randint(0, cfg["num_classes"], (self.batch,))
            dropped = torch.rand(self.batch) < cfg["label_dropout"]
            labels = torch.where(dropped, cfg["num_classes"], labels)
        return x, labels

    def train_step(self):
        torch, cfg = self.torch, self.cfg
        step = self.step + 1
        x, labels = self.batch_at(step)
        sigma = torch.exp(cfg["p_mean"] + cfg["p_std"] * torch.randn(self.batch)) / DATA_SCALE
        noise = torch.randn_like(x)
        loss_b = per_example_loss(torch, self.model, x, sigma, noise, labels, self.bf16)
        loss = loss_b.sum() / self.batch  # compute_average_loss over the global batch
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.params])
        if cfg["grad_clip_norm"]:
            torch.nn.utils.clip_grads_with_norm_(self.params, cfg["grad_clip_norm"], norm)
        if not bool(torch.isfinite(loss) & torch.isfinite(norm)):  # the NaN guard: no update
            return loss
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(cfg, self.updates)
        self.opt.step()
        self.updates += 1
        with torch.no_grad():  # e <- d e + (1 - d) w
            torch._foreach_lerp_(self.ema_params, self.params, 1.0 - ema_decay(cfg, step))
        self.step = step
        return loss


def train_figure(torch, args, bf16):
    tr = Trainer(torch, args.preset, args.batch, bf16, args.compile, args.channels_last,
                 args.adam, args.seed)  # fmt: skip

    def steps(n):
        for _ in range(n):
            loss = tr.train_step()
        return float(loss.detach())

    t0 = time.perf_counter()
    steps(1)  # warm-up (and compilation)
    t1 = time.perf_counter()
    steps(1)
    t2 = time.perf_counter()
    n = int(min(50, max(1, round(2.0 / (t2 - t1)))))
    seconds, _ = timed(lambda: steps(n), args.repeats)
    return tr.net, {
        "steps_per_call": n,
        "images_per_s": args.batch * n / seconds,
        "seconds_per_call": seconds,
        "compile_seconds": (t1 - t0) - (t2 - t1),
    }


# ---------------------------------------------------------------------------- sampling


def heun_grid(cfg: dict):
    """The preset's Heun grid: heun_steps of its Karras levels, evenly spaced (tf_score's
    solvers.heun_levels), float32 as tf_score holds them."""
    import numpy as np

    n, rho = cfg["num_levels"], cfg["rho"]
    i = np.arange(n, dtype=np.float64) / (n - 1)
    lo, hi = cfg["sigma_min"] ** (1 / rho), cfg["sigma_max"] ** (1 / rho)
    sigmas = ((hi + i * (lo - hi)) ** rho).astype(np.float32)
    idx = np.unique(np.round(np.linspace(0, n - 1, cfg["heun_steps"]))).astype(np.int32)
    return [float(s) for s in sigmas[idx]]


def heun_sample(torch, model, x, grid, bf16, labels=None):
    """tf_score's solvers.heun: Heun steps of dx/dsigma = (x - D(x; sigma)) / sigma between the
    grid's sigmas, Euler on the last (to 0): 2 len(grid) - 1 evaluations."""
    nxt = [*grid[1:], 0.0]
    batch = x.shape[0]

    def slope(x, sigma):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            d = model(x, torch.full((batch,), sigma), labels)
        return (x - d.float()) / sigma

    for k, (sigma, sigma_next) in enumerate(zip(grid, nxt, strict=True)):
        d = slope(x, sigma)
        x_euler = x + (sigma_next - sigma) * d
        if k < len(grid) - 1:
            x = x + (sigma_next - sigma) * 0.5 * (d + slope(x_euler, sigma_next))
        else:
            x = x_euler
    return x


def sample_figure(torch, args, bf16):
    """The EMA network's (equal to the live one at initialisation) Heun chains, unconditional
    ("no label" rows for a class-conditional model, as api.generate without labels)."""
    tr = Trainer(torch, args.preset, 1, bf16, False, args.channels_last, seed=args.seed)
    ema = tr.ema.eval()
    model = torch.compile(ema) if args.compile else ema
    grid = heun_grid(tr.cfg)
    g = torch.Generator().manual_seed(args.seed + 2)
    c, (h, w) = DATA_SHAPE[-1], DATA_SHAPE[:2]
    x0 = DATA_MEAN + grid[0] * torch.randn(args.batch, c, h, w, generator=g)
    x0 = x0.contiguous(memory_format=tr.memory)

    @torch.no_grad()
    def call():
        return heun_sample(torch, model, x0, grid, bf16)

    seconds, warm = timed(call, args.repeats)
    evals = 2 * len(grid) - 1
    return ema, {
        "sampler_options": {"sampler": "heun", "heun_steps": tr.cfg["heun_steps"]},
        "evals_per_image": evals,
        "evals_per_s": args.batch * evals / seconds,
        "images_per_s": args.batch / seconds,
        "seconds_per_call": seconds,
        "compile_seconds": warm - seconds,
    }


# ---------------------------------------------------------------------------- the check


def _keras_path(module_name: str, module, param: str, torch) -> str:
    """The Keras variable path (without the model's name) of a twin parameter."""
    if isinstance(module, torch.nn.Embedding):
        leaf = "embeddings"
    elif isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
        leaf = "kernel" if param == "weight" else "bias"
    else:  # GroupNorm
        leaf = "gamma" if param == "weight" else "beta"
    return module_name.replace(".", "/") + "/" + leaf


def _to_torch(array, module, param, torch):
    """A Keras weight (or its gradient) laid out as the twin's parameter."""
    t = torch.from_numpy(array).float()
    if param == "weight" and isinstance(module, torch.nn.Conv2d):
        return t.permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
    if param == "weight" and isinstance(module, torch.nn.Linear):
        return t.t().contiguous()  # [in, out] -> [out, in]
    return t


def twin_arrays(torch, net, arrays: dict, prefix: str) -> dict:
    """{twin parameter name: tensor} of the Keras arrays keyed ``prefix + path``; KeyError or
    ValueError unless they cover each other exactly, shapes included."""
    out, used = {}, set()
    for mname, module in net.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            key = prefix + _keras_path(mname, module, pname, torch)
            if key not in arrays:
                raise KeyError(f"tf_score has no {key} for the twin's {mname}.{pname}")
            t = _to_torch(arrays[key], module, pname, torch)
            if t.shape != p.shape:
                raise ValueError(f"{key}: {tuple(t.shape)} for the twin's {tuple(p.shape)}")
            out[f"{mname}.{pname}" if mname else pname] = t
            used.add(key)
    extra = sorted(k for k in arrays if k.startswith(prefix) and k not in used)
    if extra:
        raise KeyError(f"tf_score weights with no twin: {extra}")
    return out


def check(torch, args) -> int:
    """Load a --dump file into the twin; compare its output, loss and gradient with tf_score's
    (float32) and its parameter count and preset settings; 0 if all match, else 1."""
    import numpy as np

    z = dict(np.load(args.check))
    tf_cfg = json.loads(str(z["config"]))
    preset = str(z["preset"])
    mismatched = {k: [v, tf_cfg.get(k)] for k, v in PRESETS[preset].items() if tf_cfg.get(k) != v}
    net = build_network(torch, preset)
    net.load_state_dict(twin_arrays(torch, net, z, "w/"), strict=True)
    tf_grads = twin_arrays(torch, net, z, "g/")
    x = torch.from_numpy(z["x"]).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    noise = torch.from_numpy(z["noise"]).permute(0, 3, 1, 2).contiguous()
    sigma = torch.from_numpy(z["sigma"])
    labels = torch.from_numpy(z["labels"]).long() if "labels" in z else None
    nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)
    with torch.no_grad():
        *_, c_in, c_noise = net.coefficients(sigma)
        y_in = c_in.view(-1, 1, 1, 1) * (DATA_SCALE * x + DATA_SHIFT)
        raw = net.raw(y_in, c_noise, net.label_input(labels, x.shape[0]))
        out = net(x, sigma, labels)
    loss_b = per_example_loss(torch, net, x, sigma, noise, labels, False)
    (loss_b.sum() / x.shape[0]).backward()
    tf_loss = torch.from_numpy(z["loss"])
    grad_err = {}  # per tensor: max |difference| / max |tf_score's|
    for name, p in net.named_parameters():
        ref = tf_grads[name]
        grad_err[name] = float((p.grad - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    worst = max(grad_err, key=grad_err.get)
    result = {
        "preset": preset,
        "batch": int(x.shape[0]),
        "sigma": [float(s) for s in sigma],
        "params": num_params(net),
        "tf_params": int(z["params"]),
        "config_mismatches": mismatched,
        "raw_max_abs_diff": float((raw - nchw(z["raw"])).abs().max()),
        "raw_max_abs": float(np.abs(z["raw"]).max()),
        "out_max_abs_diff": float((out - nchw(z["out"])).abs().max()),
        "loss_max_rel_diff": float(((loss_b.detach() - tf_loss).abs() / tf_loss.abs()).max()),
        "grad_max_rel_diff": grad_err[worst],
        "grad_worst": worst,
    }
    ok = (
        result["params"] == result["tf_params"]
        and not mismatched
        and result["raw_max_abs_diff"] < 1e-4
        and result["out_max_abs_diff"] < 1e-4
        and result["loss_max_rel_diff"] < 1e-4
        and result["grad_max_rel_diff"] < 1e-3
    )
    result["ok"] = ok
    print(json.dumps(result), flush=True)
    return 0 if ok else 1


def dump(args) -> None:
    """(tf_score's Python) The preset's network built by the library, with random weights,
    and one batch through it: see the module's docstring. Imports TensorFlow."""
    import dataclasses

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, REPO)
    import keras
    import numpy as np
    import tensorflow as tf
    from absl import flags

    import tf_score.cli.definitions as F
    from tf_score import losses
    from tf_score.networks import registry

    flagfile = os.path.join(REPO, "flags", "presets", args.preset + ".cfg")
    flags.FLAGS(["torch_edm", f"--flagfile={flagfile}", "--workdir=/nonexistent"])
    cfg = F.experiment_config()
    flat = {}
    for field in dataclasses.fields(cfg):
        section = getattr(cfg, field.name)
        if hasattr(section, "to_dict"):
            flat.update(section.to_dict())
        elif dataclasses.is_dataclass(section):
            flat.update(dataclasses.asdict(section))
    flat = {k: (list(v) if isinstance(v, tuple) else v) for k, v in flat.items()}
    keras.utils.set_random_seed(args.seed)
    model = registry.build(cfg, DATA_SHAPE)
    assert registry.data_scale(cfg) == (DATA_SCALE, DATA_SHIFT), registry.data_scale(cfg)
    rng = np.random.default_rng(args.seed)
    for v in model.weights:  # every weight random: the check sees each one's role
        leaf = v.path.rsplit("/", 1)[-1]
        if leaf in ("bias", "beta"):
            v.assign(rng.normal(0.0, 0.1, v.shape).astype(np.float32))
        elif leaf == "gamma":
            v.assign((1.0 + rng.normal(0.0, 0.1, v.shape)).astype(np.float32))
    end = {id(model.end_conv.kernel): "end/kernel", id(model.end_conv.bias): "end/bias"}
    path = {id(v): end.get(id(v), v.path.split("/", 1)[1]) for v in model.weights}
    b, nc = args.batch, model.num_classes
    pixels = rng.integers(0, 256, (b, *DATA_SHAPE)).astype(np.float32)
    x = ((pixels + rng.uniform(size=pixels.shape)) / 256.0).astype(np.float32)
    sigma = np.geomspace(0.02, 10.0, b).astype(np.float32) if b > 1 else np.ones(1, np.float32)
    labels = np.array([(3 + 7 * i) % (nc + 1) for i in range(b)], np.int32) if nc else None
    given = {} if labels is None else {"labels": labels}
    a, shift = model.data_scale, model.data_shift
    *coeffs, c_noise = (t.numpy() for t in _tf_coefficients(a * sigma, model.sigma_data))
    y_in = coeffs[2].reshape(-1, 1, 1, 1) * (a * x + shift)
    raw = model.raw(tf.constant(y_in), tf.constant(c_noise), **given).numpy()
    out = model(x, sigma, **given).numpy()
    seed = tf.constant([args.seed, 7], tf.int32)
    n_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg="philox"))[1]
    noise = tf.random.stateless_normal(x.shape, n_seed, alg="philox").numpy()  # the loss's
    with tf.GradientTape() as tape:
        loss_b, _ = losses.denoising_loss(
            model,
            x,
            seed,
            lambda n, s: tf.constant(sigma),
            labels=None if labels is None else tf.constant(labels),
        )
        loss = tf.reduce_sum(loss_b) / b  # compute_average_loss over the global batch
    grads = tape.gradient(loss, model.trainable_variables)
    arrays = {"w/" + path[id(v)]: v.numpy() for v in model.weights}
    # (the class embedding's gradient is an IndexedSlices: dense, as the step makes it)
    arrays.update({"g/" + path[id(v)]: tf.convert_to_tensor(g).numpy()
                   for v, g in zip(model.trainable_variables, grads, strict=True)})  # fmt: skip
    arrays.update(x=x, sigma=sigma, raw=raw, out=out, noise=noise, loss=loss_b.numpy())
    if labels is not None:
        arrays["labels"] = labels
    arrays.update(preset=np.array(args.preset), config=np.array(json.dumps(flat)),
                  params=np.array(model.count_params()))  # fmt: skip
    np.savez(args.dump, **arrays)
    info = {"wrote": args.dump, "preset": args.preset, "batch": b}
    print(json.dumps({**info, "params": int(model.count_params()), "tensorflow": tf.__version__}))


def _tf_coefficients(s, sigma_data):
    from tf_score.networks.preconditioning import preconditioning

    return preconditioning(s, sigma_data)


# ---------------------------------------------------------------------------- main


def main(argv=None):
    args = _args(argv)
    if args.dump:
        dump(args)
        return
    import torch

    if args.check:
        sys.exit(check(torch, args))
    bf16 = args.precision == "mixed_bfloat16"
    cond = PRESETS[args.preset]["num_classes"]
    out = {
        "implementation": "torch_edm.py twin of tf_score EDMUNet (ngf 32, channels 32/64/96"
        + (", 10 classes)" if cond else ")"),
        "preset": args.preset,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "kind": args.kind,
        "batch": args.batch,
        "compile": args.compile,
        "channels_last": args.channels_last,
    }
    if args.kind == "train":
        out["adam"] = args.adam
    if args.kind == "matmul":
        out.update(matmul_figure(torch, bf16, args.repeats))
    else:
        figure = train_figure if args.kind == "train" else sample_figure
        net, figures = figure(torch, args, bf16)
        out["params"] = num_params(net)
        out.update(figures)
    print_figure(out, torch, bf16, args.kind, args.repeats)


if __name__ == "__main__":
    main()
