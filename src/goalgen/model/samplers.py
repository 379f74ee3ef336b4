"""Samplers: integrate from noise (t = 0) to a goal mask (t = 1).

Contract: ``sample(model_fn, x_init, steps, generator=None) -> x_1`` where
``model_fn(x, t)`` takes ``x`` (B, 1, S, S) and ``t`` of shape (B,) in [0, 1] and returns
the network output for the path's target (velocity, epsilon, v or sample).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from flow_matching.solver import ODESolver
from flow_matching.utils import ModelWrapper
from torch import Tensor

from goalgen.model.paths import HFDiffusionPath

ModelFn = Callable[[Tensor, Tensor], Tensor]
FIXED_STEP_METHODS = ("euler", "midpoint", "rk4", "heun3")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun")
# methods with a stage at the end of a step (t + h): on the last step that is t = 1
ENDPOINT_METHODS = ("rk4", *ADAPTIVE_METHODS)
ADAPTIVE_LAST_STEP = 0.05  # x1 prediction: adaptive methods stop here, a midpoint step ends


class _VelocityModel(ModelWrapper):
    """Adapts ``model_fn(x, t)`` to flow_matching's solver, which passes a 0-dim ``t``."""

    def __init__(self, model_fn: ModelFn):
        super().__init__(None)
        self.model_fn = model_fn

    def forward(self, x: Tensor, t: Tensor, **extras) -> Tensor:
        return self.model_fn(x, t.reshape(-1).expand(x.shape[0]).to(x.dtype))


class FBODESampler:
    """ODE sampling with ``flow_matching.solver.ODESolver`` (torchdiffeq underneath).

    Args:
        method: fixed-step ``euler|midpoint|rk4|heun3`` (``steps`` uniform steps) or adaptive
            ``dopri5|dopri8|bosh3|adaptive_heun`` (``steps`` ignored; ``atol``/``rtol`` rule).
    """

    family = "flow"

    def __init__(self, method: str = "midpoint", atol: float = 1e-5, rtol: float = 1e-5):
        if method not in FIXED_STEP_METHODS + ADAPTIVE_METHODS:
            raise ValueError(
                f"model.sampler.method={method!r}; choose one of "
                f"{', '.join(FIXED_STEP_METHODS + ADAPTIVE_METHODS)}"
            )
        self.method, self.atol, self.rtol = method, atol, rtol
        self.singular_at_one = False

    @property
    def adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    def attach(self, path) -> None:
        """Refuse a path of another family (a diffusion path cannot be integrated as an ODE)."""
        if getattr(path, "family", None) != self.family:
            raise ValueError(
                f"model.sampler is an ODE sampler but model.path is a {path.family} path; "
                "use model=generative_hf_diffusion's sampler with a diffusion path"
            )
        self.singular_at_one = getattr(path, "prediction", "velocity") == "x1"

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        x_init: Tensor,
        steps: int,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Integrate from 0 to 1 in ``steps`` uniform steps (adaptive methods: ``atol``/``rtol``).

        With an x1-predicting network the velocity ``(x1_hat - x) / (1 - t)`` (condOT) is
        singular at t = 1, where rk4's last stage and the adaptive solvers evaluate: that
        stage's error is amplified ~1000x (the demo model's validity fell from 41 % with
        midpoint to 4-10 % with rk4). For those methods the last step (``1 / steps``; adaptive:
        ``ADAPTIVE_LAST_STEP``) is a midpoint step, with stages at 1 - h and 1 - h/2 only; the
        other methods never evaluate at t = 1.
        """
        solver = ODESolver(velocity_model=_VelocityModel(model_fn))
        device = x_init.device
        if self.adaptive:
            grid = torch.tensor([0.0, 1.0 - ADAPTIVE_LAST_STEP, 1.0], device=device)
        else:
            grid = torch.linspace(0.0, 1.0, steps + 1, device=device)
        if not (self.singular_at_one and self.method in ENDPOINT_METHODS):
            return self._solve(solver, x_init, self.method, grid)
        x = self._solve(solver, x_init, self.method, grid[:-1]) if len(grid) > 2 else x_init
        return self._solve(solver, x, "midpoint", grid[-2:])

    def _solve(self, solver: ODESolver, x: Tensor, method: str, grid: Tensor) -> Tensor:
        """Fixed-step methods step from one grid point to the next; adaptive ones choose their
        own steps between the grid's ends."""
        if method in ADAPTIVE_METHODS:
            grid = grid[[0, -1]]
        return solver.sample(x, None, method=method, atol=self.atol, rtol=self.rtol, time_grid=grid)


class HFDiffusionSampler:
    """DDIM or DDPM sampling with diffusers' schedulers, built from the path's own config.

    Args:
        sampler_type: ``ddim`` (deterministic with ``eta=0``) or ``ddpm`` (stochastic).
        eta: DDIM noise scale in [0, 1]; DDPM takes none.
        beta_schedule, num_train_timesteps, prediction_type: optional; when given they must
            equal the path's (a sampler with another noise schedule than training produces
            garbage silently, so it is refused here).
    """

    family = "diffusion"

    def __init__(
        self,
        sampler_type: str = "ddim",
        eta: float = 0.0,
        beta_schedule: str | None = None,
        num_train_timesteps: int | None = None,
        prediction_type: str | None = None,
    ):
        if sampler_type not in ("ddim", "ddpm"):
            raise ValueError(f"model.sampler.sampler_type={sampler_type!r}; choose ddim or ddpm")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"model.sampler.eta={eta} must lie in [0, 1]")
        if sampler_type == "ddpm" and eta != 0.0:
            raise ValueError(
                f"model.sampler.eta={eta} applies to DDIM only; DDPM is stochastic by "
                "construction: drop eta or use model.sampler.sampler_type=ddim"
            )
        self.sampler_type, self.eta = sampler_type, eta
        self.path: HFDiffusionPath | None = None
        self.expected = {
            "beta_schedule": beta_schedule,
            "num_train_timesteps": num_train_timesteps,
            "prediction_type": prediction_type,
        }

    def attach(self, path: HFDiffusionPath) -> None:
        """Check the path's schedule matches and keep it (the sampler steps through it)."""
        if getattr(path, "family", None) != self.family:
            raise ValueError(
                f"model.sampler is a diffusion sampler but model.path is a {path.family} path; "
                "use model=generative_fb_flow_matching's ODE sampler with a flow path"
            )
        for key, wanted in self.expected.items():
            actual = path.scheduler.config[key]
            if wanted is not None and wanted != actual:
                raise ValueError(
                    f"model.sampler.{key}={wanted!r} differs from model.path.{key}={actual!r}; "
                    "the sampler must use the schedule the model was trained with "
                    f"(remove model.sampler.{key} or set both to the same value)"
                )
        self.path = path
        cls = DDIMScheduler if self.sampler_type == "ddim" else DDPMScheduler
        self.scheduler = cls.from_config(path.scheduler.config)

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        x_init: Tensor,
        steps: int,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        scheduler, path = self.scheduler, self.path
        scheduler.set_timesteps(steps, device=x_init.device)
        x = x_init
        extra = {"eta": self.eta} if self.sampler_type == "ddim" else {}
        for k in scheduler.timesteps:
            t = path.timestep_to_t(k.reshape(1)).expand(x.shape[0]).to(x.device)
            out = model_fn(x, t)
            x = scheduler.step(out, k, x, generator=generator, **extra).prev_sample
        return x
