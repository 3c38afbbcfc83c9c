"""Pictures of a checkpoint's masks, one PNG per masked layer (``mtrl-sparse masks``).

Every weight is a square of ``scale`` x ``scale`` pixels, black where the weight is active and
white where it is pruned, so that the picture is the mask itself (read back, it gives the mask
exactly). Layouts, by the kernel's shape:

* a dense layer's (in, out) kernel: inputs down, outputs across;
* a convolution's (kh, kw, in, out) kernel: one (in, out) block per tap, the taps in a kh x kw
  grid, blocks separated by a grey line one weight wide;
* a leaf stacking the per-task heads (``methods.topology.LayerSlices``): each task's slice its
  own block, side by side along the stacked axis, separated likewise;
* any other shape: its leading axes flattened into rows against the last axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtrl_sparse.mask_stats import NetworkMasks, task_slices
from mtrl_sparse.methods.topology import LayerSlices, named_leaf_slices

ACTIVE, PRUNED, SEPARATOR = 0, 255, 160
"""Grey levels of an active weight, a pruned one and the lines between blocks."""
TARGET_PIXELS = 512
"""Small masks are scaled up (whole pixels per weight) until their long side reaches this..."""
MIN_SHORT_SIDE = 192
"""... or their short side this, whichever needs more, up to ``MAX_PIXELS`` on the long side."""
MAX_PIXELS = 2048


def tile(blocks: list[list[np.ndarray]]) -> np.ndarray:
    """uint8 grey image of a grid of 2-D bool blocks (rows of equal-height blocks, columns of
    equal-width ones), one ``SEPARATOR`` pixel between blocks."""
    rows = []
    for row in blocks:
        height = row[0].shape[0]
        line = np.full((height, 1), SEPARATOR, np.uint8)
        parts = [np.where(block, ACTIVE, PRUNED).astype(np.uint8) for block in row]
        rows.append(np.concatenate([x for part in parts for x in (part, line)][:-1], axis=1))
    width = rows[0].shape[1]
    line = np.full((1, width), SEPARATOR, np.uint8)
    return np.concatenate([x for row in rows for x in (row, line)][:-1], axis=0)


def mask_picture(layer: str, mask: np.ndarray, layer_slices: LayerSlices) -> np.ndarray:
    """The uint8 (H, W) picture of one masked leaf at one pixel per weight (module docstring)."""
    slices = named_leaf_slices(layer, layer_slices)
    if slices is not None:
        axis, count = slices
        per_task = task_slices(mask, axis, count)  # (T, sliced axis, the other axes)
        if axis % mask.ndim == mask.ndim - 1:  # outputs stacked: each task's (in, out) block
            return tile([[per_task[t].reshape(per_task.shape[1], -1).T for t in range(count)]])
        return tile([[per_task[t].reshape(per_task.shape[1], -1)] for t in range(count)])
    if mask.ndim == 4:  # (kh, kw, in, out): a block per tap
        return tile([[mask[i, j] for j in range(mask.shape[1])] for i in range(mask.shape[0])])
    return tile([[mask.reshape(-1, mask.shape[-1]) if mask.ndim > 1 else mask[None]]])


def scale_for(picture: np.ndarray) -> int:
    """Whole pixels per weight that bring the long side of ``picture`` up to about
    ``TARGET_PIXELS`` or its short side to ``MIN_SHORT_SIDE`` (1 for masks already that
    large), the long side at most ``MAX_PIXELS``."""
    wanted = max(TARGET_PIXELS // max(picture.shape), MIN_SHORT_SIDE // min(picture.shape))
    return max(1, min(wanted, MAX_PIXELS // max(picture.shape)))


def file_name(network: str, layer: str) -> str:
    """``actor__trunk.conv_0.kernel.png`` for the actor's ``trunk/conv_0/kernel``."""
    return f"{network}__{layer.replace('/', '.')}.png"


def write_mask_pictures(masks: dict[str, NetworkMasks], layer_slices: LayerSlices,
                        out_dir: Path) -> list[tuple[Path, str, tuple[int, ...], float]]:
    """Write every masked layer's picture into ``out_dir`` (created); returns (path, layer,
    shape, density) per picture. Needs Pillow (with matplotlib, in the ``report`` extra)."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for network, layers in masks.items():
        for layer, mask in layers.items():
            picture = mask_picture(layer, mask, layer_slices)
            scale = scale_for(picture)
            scaled = np.kron(picture, np.ones((scale, scale), np.uint8))
            path = out_dir / file_name(network, layer)
            Image.fromarray(scaled).save(path)
            written.append((path, f"{network}/{layer}", mask.shape, float(mask.mean())))
    return written
