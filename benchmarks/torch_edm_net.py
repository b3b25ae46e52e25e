"""The PyTorch twin of tf_score's EDM U-Net denoiser (``tf_score.networks.denoisers.EDMUNet``
with its EDM preconditioning), NCHW; imported by torch_edm.py in a Python that has PyTorch.
Module names are tf_score's layer names, so its weights map one to one (``torch_edm.py
--check``)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch_edm import DATA_SCALE, DATA_SHAPE, DATA_SHIFT, GN_EPSILON  # beside this module


def groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class GroupNorm(nn.Module):
    """tf_score's GroupNorm: group norm (epsilon 1e-3, 8/4/2/1 groups) with gamma and beta,
    then FiLM: h (1 + scale) + shift."""

    def __init__(self, channels: int):
        super().__init__()
        self.groups = groups(channels)
        self.weight = nn.Parameter(torch.ones(channels))  # gamma
        self.bias = nn.Parameter(torch.zeros(channels))  # beta

    def forward(self, x, scale=None, shift=None):
        h = F.group_norm(x, self.groups, self.weight, self.bias, GN_EPSILON)
        return h if scale is None else torch.addcmul(shift, h, 1.0 + scale)


class NoiseEmbedding(nn.Module):
    """c_noise [B] -> [B, dim]: sin/cos at dim/2 geometric frequencies 1 .. 1000, then
    Linear -> SiLU -> Linear, a class embedding (if any) added before the SiLU."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        freqs = [math.exp(math.log(1000.0) * k / max(half - 1, 1)) for k in range(half)]
        self.register_buffer("freqs", torch.tensor(freqs, dtype=torch.float32), False)
        self.dense1 = nn.Linear(2 * half, dim)
        self.dense2 = nn.Linear(dim, dim)

    def forward(self, c_noise, extra=None):
        angles = c_noise.float()[:, None] * self.freqs[None, :]
        h = self.dense1(torch.cat([torch.sin(angles), torch.cos(angles)], 1))
        if extra is not None:
            h = h + extra
        return self.dense2(F.silu(h))


class FiLMResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> GroupNorm -> FiLM(emb) -> SiLU -> conv, plus a shortcut
    (a 1x1 conv where the width changes)."""

    def __init__(self, cin: int, filters: int, emb_dim: int):
        super().__init__()
        self.norm1 = GroupNorm(cin)
        self.conv1 = nn.Conv2d(cin, filters, 3, padding=1)
        self.norm2 = GroupNorm(filters)
        self.film = nn.Linear(emb_dim, 2 * filters)
        self.conv2 = nn.Conv2d(filters, filters, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, filters, 1) if cin != filters else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h, scale, shift)))
        return (x if self.shortcut is None else self.shortcut(x)) + h


class EDMUNet(nn.Module):
    """tf_score's EDMUNet: D(x; sigma) of NCHW data-unit images x and sigma [B] (labels [B]
    for a class-conditional one, None: "no label"), with EDM preconditioning around the
    U-Net ``raw`` (module names are tf_score's layer names; ``begin``, ``norm``, ``end``)."""

    def __init__(self, ngf, channel_mults, num_blocks, num_classes=0, sigma_data=0.5,
                 channels=DATA_SHAPE[-1]):  # fmt: skip
        super().__init__()
        self.mults, self.num_blocks = list(channel_mults), num_blocks
        self.num_classes = num_classes
        self.sigma_data = float(sigma_data)
        width = 4 * ngf
        self.embed = NoiseEmbedding(width)
        self.class_embed = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.begin = nn.Conv2d(channels, ngf, 3, padding=1)
        cin = ngf
        for s, mult in enumerate(self.mults):
            f = ngf * mult
            for b in range(num_blocks):
                self.add_module(f"down_{s}_{b}", FiLMResBlock(cin if b == 0 else f, f, width))
                self.add_module(f"up_{s}_{b}", FiLMResBlock(f, f, width))
            if s > 0:
                prev = ngf * self.mults[s - 1]
                self.add_module(f"upconv_{s}", nn.Conv2d(f, prev, 3, padding=1))
            cin = f
        self.norm = GroupNorm(ngf)
        self.end = nn.Conv2d(ngf, channels, 3, padding=1)

    def raw(self, y_in, c_noise, labels=None):
        extra = self.class_embed(labels) if self.class_embed is not None else None
        emb = self.embed(c_noise, extra)
        h = self.begin(y_in)
        skips, n = [], len(self.mults)
        for s in range(n):
            if s > 0:
                h = F.avg_pool2d(h, 2)
            for b in range(self.num_blocks):
                h = getattr(self, f"down_{s}_{b}")(h, emb)
            skips.append(h)
        for s in reversed(range(n)):
            if s < n - 1:
                h = h + skips[s]
            for b in range(self.num_blocks):
                h = getattr(self, f"up_{s}_{b}")(h, emb)
            if s > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
                h = getattr(self, f"upconv_{s}")(h)
        return self.end(F.silu(self.norm(h)))

    def coefficients(self, sigma):
        """(c_skip, c_out, c_in, c_noise) at sigma [B] in data units (EDM, network scale)."""
        s, sd2 = DATA_SCALE * sigma.float(), self.sigma_data**2
        norm = torch.sqrt(s * s + sd2)
        return sd2 / (s * s + sd2), s * self.sigma_data / norm, 1.0 / norm, torch.log(s) / 4.0

    def label_input(self, labels, batch):
        if not self.num_classes:
            return None
        if labels is None:
            return torch.full((batch,), self.num_classes, dtype=torch.long)
        return labels.long().expand(batch)

    def forward(self, x, sigma, labels=None):
        x = x.float()
        y = DATA_SCALE * x + DATA_SHIFT
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        c_skip, c_out, c_in = (c.view(-1, 1, 1, 1) for c in (c_skip, c_out, c_in))
        f = self.raw(c_in * y, c_noise, self.label_input(labels, x.shape[0]))
        return (c_skip * y + c_out * f.float() - DATA_SHIFT) / DATA_SCALE
