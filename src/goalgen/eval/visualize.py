"""Pictures of scenes and sampled goal masks (TensorBoard grids and PNG files).

Masks are in [-1, 1] as the model sees them; images are float RGB (3, H, W) in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

# robot, goal, movable, static, target_object -> RGB, painted in this order (last on top)
_PAINT_ORDER = (
    (3, (0.35, 0.35, 0.35)),
    (2, (0.25, 0.45, 0.95)),
    (4, (0.95, 0.25, 0.2)),
    (0, (0.2, 0.8, 0.3)),
    (1, (0.95, 0.8, 0.1)),
)


def _unit(mask: Tensor) -> Tensor:
    return ((mask.float() + 1) / 2).clamp(0, 1)


def scene_rgb(context: Tensor) -> Tensor:
    """(5, S, S) context -> (3, S, S): walls grey, boxes blue, selected red, robot green,
    robot goal yellow, on white."""
    image = torch.ones(3, *context.shape[-2:])
    for channel, color in _PAINT_ORDER:
        alpha = _unit(context[channel].cpu())
        image = image * (1 - alpha) + torch.tensor(color).view(3, 1, 1) * alpha
    return image


def overlay_rgb(context: Tensor, mask: Tensor) -> Tensor:
    """A goal mask (1, S, S) drawn in magenta over a faint copy of the scene."""
    base = 0.6 + 0.4 * scene_rgb(context)
    alpha = _unit(mask[0].cpu())
    return base * (1 - alpha) + torch.tensor((0.8, 0.0, 0.8)).view(3, 1, 1) * alpha


def sample_grid(context: Tensor, truth: Tensor | None, samples: Tensor, pad: int = 2) -> Tensor:
    """One row per scene: scene | selected object | ground truth (if any) | samples.

    Args:
        context: (N, 5, S, S); truth: (N, 1, S, S) or None; samples: (N, K, 1, S, S).
    Returns:
        (3, H, W) image in [0, 1].
    """
    rows = []
    for i in range(context.shape[0]):
        cells = [scene_rgb(context[i]), overlay_rgb(context[i], context[i, 4:5])]
        if truth is not None:
            cells.append(overlay_rgb(context[i], truth[i]))
        cells += [overlay_rgb(context[i], s) for s in samples[i]]
        rows.append(
            torch.cat([torch.nn.functional.pad(c, (pad,) * 4, value=1.0) for c in cells], dim=2)
        )
    return torch.cat(rows, dim=1)


def trajectory_strip(
    context: Tensor, trajectory: Tensor, frames: int = 11, rows: int = 8, pad: int = 2
) -> Tensor:
    """The sampler at work: one row per sample, the scene then ``frames`` states from the
    noise to the sample (evenly chosen; always the first and the last).

    Args:
        context: (5, S, S) in [-1, 1]; trajectory: (K, T, S, S) on the probability scale
            (``Prediction.trajectory``; values outside [0, 1] are clipped for display).
    Returns:
        (3, H, W) image in [0, 1] of ``min(K, rows)`` rows.
    """
    steps = trajectory.shape[1]
    picks = torch.linspace(0, steps - 1, min(frames, steps)).round().long().unique()
    lines = []
    for states in trajectory[:rows]:
        cells = [scene_rgb(context)]
        cells += [overlay_rgb(context, states[j][None] * 2 - 1) for j in picks.tolist()]
        lines.append(
            torch.cat([torch.nn.functional.pad(c, (pad,) * 4, value=1.0) for c in cells], dim=2)
        )
    return torch.cat(lines, dim=1)


def save_png(image: Tensor, path: Path, scale: int = 4) -> None:
    """Write a (3, H, W) [0, 1] image, upscaled ``scale`` times (nearest) for legibility."""
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    picture = Image.fromarray(array)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
