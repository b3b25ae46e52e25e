"""PNG figures: 2-D scatter panels and image grids (matplotlib, headless)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def scatter_panels(
    panels: dict[str, np.ndarray], extent: float, path: str | None = None, dpi: int = 110
) -> bytes:
    """One scatter plot per named 2-D sample set, side by side; returns the PNG bytes.

    Points outside [-extent, extent]^2 are clipped to the frame edge, so a sampler that
    diverges is visible rather than silently dropped.
    """
    return scatter_grid([("", panels)], extent, path, dpi)


def scatter_grid(
    rows: list[tuple[str, dict[str, np.ndarray]]], extent: float, path: str | None = None,
    dpi: int = 110,
) -> bytes:  # fmt: skip
    """``scatter_panels`` in rows, each ``(label, panels)`` (the label is drawn on its left);
    shorter rows leave their last cells blank. Returns the PNG bytes (also written to path)."""
    ncols = max(len(p) for _, p in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.2 * ncols, 3.4 * len(rows)),
                             squeeze=False)  # fmt: skip
    for r, (label, panels) in enumerate(rows):
        for ax, (title, x) in zip(axes[r], panels.items(), strict=False):
            x = np.clip(np.asarray(x), -extent, extent)
            ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color="tab:blue", linewidths=0)
            ax.set_xlim(-extent, extent)
            ax.set_ylim(-extent, extent)
            ax.set_aspect("equal")
            ax.set_title(title, fontsize=9)
            ax.tick_params(labelsize=7)
        for ax in axes[r][len(panels) :]:
            ax.axis("off")
        if label:
            axes[r][0].set_ylabel(label, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    data = buf.getvalue()
    if path:
        with open(path, "wb") as f:
            f.write(data)
    return data


def png_to_array(png: bytes) -> np.ndarray:
    """Decode PNG bytes into a uint8 [H, W, C] array (for TensorBoard image summaries)."""
    import tensorflow as tf

    return tf.io.decode_png(png, channels=3).numpy()


def image_grid(images, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images [N, H, W, C] with values in [0, 1] into one uint8 [H', W', C] grid.

    Values are clipped to [0, 1] (Langevin samples overshoot slightly); grayscale stays 1-channel.
    """
    x = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = x.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32)
    for k in range(n):
        r, q = divmod(k, ncols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top : top + h, left : left + w] = x[k]
    return np.round(grid * 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str, scale: int = 1) -> None:
    """Write a uint8 [H, W, C] array as PNG (nearest-neighbour enlarged by ``scale``)."""
    from PIL import Image

    a = np.asarray(array, np.uint8)
    if scale > 1:
        a = a.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(path)


def save_gif(frames: list[np.ndarray], path: str, scale: int = 1, ms_per_frame: int = 300):
    """Write uint8 [H, W, C] frames as an animated GIF."""
    from PIL import Image

    ims = []
    for f in frames:
        f = np.asarray(f, np.uint8)
        if scale > 1:
            f = f.repeat(scale, axis=0).repeat(scale, axis=1)
        ims.append(Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f))
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=ms_per_frame, loop=0)


def read_scalars(logdir: str, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a scalar written by ``tf.summary.scalar`` under ``logdir``."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    events = acc.Tensors(tag)
    steps = np.array([e.step for e in events])
    values = np.array([float(tf.make_ndarray(e.tensor_proto)) for e in events])
    return steps, values


def loss_curves(logdir: str, tags: list[str], path: str, title: str = "", logy=True) -> None:
    """Plot TensorBoard scalars of one run against the step and save a PNG."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for tag in tags:
        steps, values = read_scalars(logdir, tag)
        ax.plot(steps, values, label=tag, lw=1.2)
    ax.set_xlabel("step")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
