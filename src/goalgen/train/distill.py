"""Few-step students of a trained flow model (``distill.teacher``): reflow (Liu et al. 2023,
"Flow Straight and Fast") on the teacher's own samples.

Each training step draws its noise ``z`` and time ``t`` as usual (per sample, from the seed,
the epoch and the index: a resumed run draws the same). The teacher integrates ``z`` to
``x1 = T(z | context)`` with its sampler (``distill.method``, ``distill.steps``), and the
student learns the straight path from ``z`` to that ``x1``: ``x_t = (1 - t) z + t x1``. On
that coupling one euler step from ``t = 0`` lands on ``x1``: the student's prediction at
``t = 0`` is its one-step sample, so a share ``distill.t_zero`` of the times is set to 0
(the rest stay uniform, for two or more steps). The teacher's targets are deterministic in
``z``, so a requeued run resumes exactly.

Start the student from the teacher's weights with ``run_path`` (the planner recipe:
``experiment=planner_student``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from goalgen.infer.predictor import GoalPredictor


class Teacher:
    """A trained flow model whose samples are the targets (eval mode, no gradients)."""

    def __init__(
        self,
        source: str,
        steps: int,
        method: str,
        device: torch.device,
        precision: str | None,
        student_family: str,
        image_size: int,
    ):
        try:
            self.predictor = GoalPredictor.from_run(source, device=device, precision=precision)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"distill.teacher={source}: {exc}; train the teacher first (experiment=planner) "
                "or give a flow run dir, checkpoint or weights file"
            ) from exc
        self.steps, self.method = int(steps), method
        if self.predictor.family != "flow" or student_family != "flow":
            raise ValueError(
                f"distill.teacher={source} is a {self.predictor.family} model: reflow needs a "
                "flow teacher and a flow student (--config-name=train_fb_flow_matching)"
            )
        if self.predictor.image_size != int(image_size):
            raise ValueError(
                f"distill.teacher={source} samples {self.predictor.image_size} px goals, the "
                f"student image_size={image_size}: make them equal"
            )
        if self.method not in self.predictor.methods():
            raise ValueError(
                f"distill.method={method!r}; choose one of {', '.join(self.predictor.methods())}"
            )

    @torch.no_grad()
    def targets(self, context: Tensor, noise: Tensor) -> Tensor:
        """The teacher's samples ``(B, 1, S, S)`` in [-1, 1] from ``noise`` ``(B, 1, S, S)``
        for ``context`` ``(B, 5, S, S)``."""
        out = self.predictor.sample(context, 1, self.steps, self.method, noise=noise)
        return out[:, 0].to(noise.dtype)


def distill_times(t: Tensor, t_zero: float, t_max: float) -> Tensor:
    """``(B,)``: times drawn from U(0, ``t_max``) mapped to 0 for a share ``t_zero`` of them
    and to U(0, ``t_max``) again for the rest (deterministic in ``t``)."""
    if not 0 <= t_zero < 1:
        raise ValueError(f"distill.t_zero={t_zero} must be in [0, 1)")
    u = t / t_max
    return torch.where(u < t_zero, torch.zeros_like(t), (u - t_zero) / (1 - t_zero) * t_max)
