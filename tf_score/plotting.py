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
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for ax, (title, x) in zip(axes[0], panels.items(), strict=True):
        x = np.clip(np.asarray(x), -extent, extent)
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color="tab:blue", linewidths=0)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
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
