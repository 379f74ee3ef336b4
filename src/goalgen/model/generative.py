"""GenerativeModel = DiT backbone + probability path + sampler.

Tensors: ``context`` (B, 5, S, S) in [-1, 1] (robot, goal, movable, static, target_object),
``x_1`` (B, 1, S, S) goal mask in [-1, 1]. The network sees
``cat([context, coord_y, coord_x, x_t])`` = 8 channels.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from goalgen.model.paths import FBFlowMatchingPath, HFDiffusionPath
from goalgen.model.samplers import FBODESampler, HFDiffusionSampler, Record


def coordinate_grid(batch: int, size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(B, 2, S, S) row and column coordinates in [-1, 1] (a read-only expanded view of a
    cached (2, S, S) grid: built once per size, device and dtype, not at every network call)."""
    return _grid(size, torch.device(device), dtype).expand(batch, 2, size, size)


@functools.lru_cache(maxsize=16)
def _grid(size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():  # a plain tensor whatever the caller's mode
        axis = torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype)
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        return torch.stack([yy, xx])


def soft_dice_loss(
    x_1_hat: Tensor, x_1: Tensor, eps: float = 1.0, weight: Tensor | None = None
) -> Tensor:
    """1 - Dice between masks in [-1, 1] (prediction clamped), averaged over the batch
    (``weight`` (B,): the mean of ``weight * (1 - Dice)`` instead)."""
    p = (x_1_hat.float().clamp(-1, 1) + 1) / 2
    g = (x_1.float() + 1) / 2
    inter = (p * g).flatten(1).sum(1)
    total = p.flatten(1).sum(1) + g.flatten(1).sum(1)
    loss = 1 - (2 * inter + eps) / (total + eps)
    return (loss if weight is None else weight * loss).mean()


def aux_weight(path: FBFlowMatchingPath | HFDiffusionPath, t: Tensor) -> Tensor:
    """Per-sample weight (B,) of the dice term on ``x1_hat = path.to_x1(prediction, x_t, t)``:
    ``min(1, 1 / g^2)`` with ``g`` the gain of that conversion, affine in the prediction
    (diffusion epsilon: ``g = sigma / alpha``, 2e4 at the noisiest timestep, also with
    ``epsilon_skip``: the dice of an x0 that cannot be known yet stays down-weighted, which
    measured 0.21 vs 0.07 demo validity against weighting it fully; v: ``sigma``;
    flow velocity: ``sigma / (alpha' sigma - sigma' alpha)``, 15 for vp and ``1 / 2t`` for
    polynomial near t = 0; x1 or sample prediction: 1). The term's gradient w.r.t. the
    network output is then at most its gradient w.r.t. ``x1_hat`` times ``min(g, 1/g) <= 1``,
    and the term is untouched where the conversion does not amplify."""
    zero = torch.zeros(t.shape[0], 1, 1, 1, device=t.device)
    gain = path.to_x1(zero + 1, zero, t) - path.to_x1(zero, zero, t)
    return gain.flatten().square().reciprocal().clamp(max=1)


class GenerativeModel(nn.Module):
    """Conditional generative model of goal masks.

    ``forward(context, x_1, noise, t)`` returns the training losses (so DDP wraps it whole);
    ``sample(context, steps, generator)`` draws goal masks (B, 1, S, S) in [-1, 1].
    """

    def __init__(
        self,
        network: nn.Module,
        path: FBFlowMatchingPath | HFDiffusionPath,
        sampler: FBODESampler | HFDiffusionSampler,
        aux_loss_weight: float = 0.0,
    ):
        super().__init__()
        sampler.attach(path)
        self.network, self.path, self.sampler = network, path, sampler
        self.aux_loss_weight = aux_loss_weight

    @property
    def family(self) -> str:
        return self.path.family

    def predict(
        self, x_t: Tensor, t: Tensor, context: Tensor, network: nn.Module | None = None
    ) -> Tensor:
        """Network output for noisy target ``x_t`` (B, 1, S, S) at times ``t`` (B,)."""
        net = network if network is not None else self.network
        coords = coordinate_grid(x_t.shape[0], x_t.shape[-1], x_t.device, x_t.dtype)
        raw = net(torch.cat([context.to(x_t.dtype), coords, x_t], dim=1), t)
        return self.path.output(raw, x_t, t)

    def forward(self, context: Tensor, x_1: Tensor, noise: Tensor, t: Tensor) -> dict[str, Tensor]:
        x_t, t_net, target = self.path.sample(x_1, noise, t)
        prediction = self.predict(x_t, t_net, context)
        error = ((prediction.float() - target.float()) ** 2).flatten(1).mean(1)
        mse = error.mean()
        weight = self.path.loss_weight(t_net)
        losses = {"mse": mse, "loss": mse if weight is None else (weight * error).mean()}
        if self.aux_loss_weight > 0:
            x_1_hat = self.path.to_x1(prediction.float(), x_t.float(), t_net)
            dice = soft_dice_loss(x_1_hat, x_1, weight=aux_weight(self.path, t_net))
            losses["dice"] = dice
            losses["loss"] = losses["loss"] + self.aux_loss_weight * dice
        return losses

    @torch.no_grad()
    def sample(
        self,
        context: Tensor,
        steps: int,
        generator: torch.Generator | None = None,
        network: nn.Module | None = None,
        record: Record | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Goal masks for each context row: (B, 1, S, S), values in [-1, 1] (clamped).

        ``network`` overrides the weights used (e.g. the EMA copy). To draw K samples per
        scene in one batched call, repeat the context rows (``context.repeat_interleave(K, 0)``).
        ``record`` receives the sampler's ``steps + 1`` states, unclamped (see
        :mod:`goalgen.model.samplers`). ``noise`` (B, 1, S, S): the starting noise, instead
        of a draw from ``generator``.
        """
        b, _, s, _ = context.shape
        if noise is not None:
            if noise.shape != (b, 1, s, s):
                raise ValueError(f"noise of shape {tuple(noise.shape)}; expected {(b, 1, s, s)}")
            x_init = noise.to(context.device, torch.float32)
        else:
            x_init = torch.randn((b, 1, s, s), generator=generator, device=context.device)

        def model_fn(x: Tensor, t: Tensor) -> Tensor:  # the raw output: samplers convert it
            return self.predict(x, t, context, network).float()

        x_1 = self.sampler.sample(model_fn, x_init, steps, generator=generator, record=record)
        return x_1.clamp(-1, 1)
