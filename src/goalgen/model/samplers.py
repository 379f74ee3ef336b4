"""Samplers: integrate from noise (t = 0) to a goal mask (t = 1).

Contract: ``sample(model_fn, x_init, steps, generator=None, record=None) -> x_1`` where
``model_fn(x, t)`` takes ``x`` (B, 1, S, S) and ``t`` of shape (B,) in [0, 1] and returns
the network output for the path's target (velocity, epsilon, v or sample). ``record``, when
given, is called with the sampler's state (B, 1, S, S) ``steps + 1`` times: at t = 0 (the
noise), after every step, the last call with the returned ``x_1`` (adaptive ODE methods: at
``steps + 1`` uniform times, their own steps being their own).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from flow_matching.solver import ODESolver
from flow_matching.utils import ModelWrapper
from torch import Tensor
from torchdiffeq import odeint

from goalgen.model.paths import FBFlowMatchingPath, HFDiffusionPath

ModelFn = Callable[[Tensor, Tensor], Tensor]
Record = Callable[[Tensor], None]
FIXED_STEP_METHODS = ("euler", "midpoint", "rk4", "heun3")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun")
STOCHASTIC_METHODS = ("ancestral",)  # DDIM-eta steps on the predicted x1 (FBODESampler)
DIFFUSION_SAMPLERS = ("ddim", "ddpm")


def sampler_methods(family: str) -> tuple[str, ...]:
    """The sampler methods a model of ``family`` takes: ODE methods and ``ancestral`` (flow) or
    DDIM/DDPM."""
    flow = FIXED_STEP_METHODS + ADAPTIVE_METHODS + STOCHASTIC_METHODS
    return flow if family == "flow" else DIFFUSION_SAMPLERS


ADAPTIVE_LAST_STEP = 0.05  # adaptive methods integrate to 1 - this; the final step ends
# torchdiffeq's initial-step probe evaluates at t0 + 0.01 |x| / |v|: t = 26 for the small
# velocity of an untrained vp model. A given first step skips it (NFE within 10 % either way)
ADAPTIVE_FIRST_STEP = 0.05


class _VelocityModel(ModelWrapper):
    """Adapts ``model_fn(x, t)`` to flow_matching's solver, which passes a 0-dim ``t``."""

    def __init__(self, model_fn: ModelFn):
        super().__init__(None)
        self.model_fn = model_fn

    def forward(self, x: Tensor, t: Tensor, **extras) -> Tensor:
        return self.model_fn(x, _batch_t(t, x))


def _batch_t(t: Tensor, x: Tensor) -> Tensor:
    """A solver's 0-dim time as the (B,) times of the contract."""
    return t.reshape(-1).expand(x.shape[0]).to(x.dtype)


class FBODESampler:
    """ODE sampling with ``flow_matching.solver.ODESolver`` (torchdiffeq underneath), or
    ancestral sampling on the path's predicted x1.

    Args:
        method: fixed-step ``euler|midpoint|rk4|heun3`` (``steps`` uniform steps), adaptive
            ``dopri5|dopri8|bosh3|adaptive_heun`` (``steps`` ignored; ``atol``/``rtol`` rule),
            or ``ancestral`` (``steps`` uniform steps, :meth:`_ancestral`).
        eta: ``ancestral`` only: the share of each step's noise drawn afresh (0: the
            deterministic DDIM step, = euler for condOT; 1: the posterior's full noise).
    """

    family = "flow"

    def __init__(
        self, method: str = "midpoint", atol: float = 1e-5, rtol: float = 1e-5, eta: float = 1.0
    ):
        methods = sampler_methods(self.family)
        if method not in methods:
            raise ValueError(f"model.sampler.method={method!r}; choose one of {', '.join(methods)}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"model.sampler.eta={eta} must lie in [0, 1]")
        self.method, self.atol, self.rtol, self.eta = method, atol, rtol, float(eta)
        self.path: FBFlowMatchingPath | None = None

    @property
    def adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    def attach(self, path: FBFlowMatchingPath) -> None:
        """Refuse a path of another family (a diffusion path cannot be integrated as an ODE)."""
        if getattr(path, "family", None) != self.family:
            raise ValueError(
                f"model.sampler is an ODE sampler but model.path is a {path.family} path; "
                "use model=generative_hf_diffusion's sampler with a diffusion path"
            )
        if self.method in STOCHASTIC_METHODS and getattr(path, "prediction", "x1") != "x1":
            raise ValueError(
                f"model.sampler.method={self.method} steps on the predicted x1, which a "
                f"{path.prediction} prediction gives only where the path is regular; use "
                "model.path.prediction=x1 or an ODE method"
            )
        self.path = path

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        x_init: Tensor,
        steps: int,
        generator: torch.Generator | None = None,
        record: Record | None = None,
    ) -> Tensor:
        """Integrate from t = 0 to 1: ``steps`` uniform steps (adaptive: ``atol``/``rtol``).

        With a path attached, ``model_fn`` returns the network output (velocity or x1): the
        ODE integrates ``path.to_sampler_output`` of it up to ``1 - h`` (``h = 1 / steps``;
        adaptive: ``ADAPTIVE_LAST_STEP``) and :meth:`_last_step` goes to t = 1 without
        evaluating there, where the velocity is singular (x1 prediction: ``(x1_hat - x) /
        (1 - t)`` for condOT; vp: ``sigma_t ~ sqrt(1 - t)``, so a step over [1 - h, 1] left
        noise ``~ sigma_{1-h}``). Without a path ``model_fn`` is a velocity field, integrated
        up to t = 1. Every network call has t in [0, 1].
        """
        if self.method in STOCHASTIC_METHODS:
            return self._record(self._ancestral(model_fn, x_init, steps, generator), record)
        end = 1.0 if self.path is None else 1.0 - ADAPTIVE_LAST_STEP
        if not self.adaptive:
            grid = torch.linspace(0.0, 1.0, steps + 1)
        elif record is None:
            grid = torch.tensor([0.0, end])
        else:  # where to report the solution; the solver picks its own steps in between
            grid = torch.linspace(0.0, end, steps + 1 if self.path is None else max(steps, 2))
        grid = grid.to(x_init.device)
        if self.path is None:
            return self._record(self._solve(model_fn, x_init, grid), record)
        path = self.path

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            return path.to_sampler_output(model_fn(x, t), x, t)

        grid = grid if self.adaptive else grid[:-1]
        states = self._solve(velocity, x_init, grid) if len(grid) > 1 else x_init[None]
        x_1 = self._last_step(model_fn, states[-1], grid[-1])
        shown = states if steps > 1 or not self.adaptive else states[:1]
        return self._record(torch.cat([shown, x_1[None]]), record)

    @staticmethod
    def _record(states: Tensor, record: Record | None) -> Tensor:
        """The last of ``states`` (T, B, ...), after passing each to ``record``."""
        for x in states if record is not None else ():
            record(x)
        return states[-1]

    def _ancestral(
        self, model_fn: ModelFn, x: Tensor, steps: int, generator: torch.Generator | None
    ) -> Tensor:
        """States ``(steps + 1, B, ...)`` of ancestral sampling over ``steps`` uniform steps.

        Each step from ``t_a`` to ``t_b`` predicts ``x1_hat`` and the noise ``eps_hat = (x -
        alpha_a x1_hat) / sigma_a``, then draws ``x' = alpha_b x1_hat + sqrt(sigma_b^2 -
        s^2) eps_hat + s z``, ``z ~ N(0, I)``, ``s = eta sigma_b sqrt(1 - (alpha_a sigma_b /
        (alpha_b sigma_a))^2)``: at ``eta = 1`` the posterior ``q(x_b | x_a, x1_hat)`` of
        the path's Gaussian marginals (DDPM's step for any scheduler), at ``eta = 0`` DDIM's.
        An exact x1 predictor therefore keeps every state on the path's marginal at its
        time. The last step returns ``x1_hat`` (t = 1 is never evaluated)."""
        if self.path is None:
            raise ValueError("ancestral sampling needs a path (its x1 and alpha/sigma)")
        path, states = self.path, [x]
        grid = torch.linspace(0.0, 1.0, steps + 1, device=x.device)
        for t_a, t_b in zip(grid[:-1], grid[1:], strict=True):
            t = t_a.expand(x.shape[0])
            x1 = path.to_x1(model_fn(x, t), x, t)
            if t_b >= 1:
                states.append(x1)
                break
            (alpha_a, sigma_a), (alpha_b, sigma_b) = path.alpha_sigma(t_a), path.alpha_sigma(t_b)
            eps = (x - alpha_a * x1) / sigma_a
            kept = (alpha_a * sigma_b / (alpha_b * sigma_a)).clamp(max=1.0)
            s = self.eta * sigma_b * torch.sqrt(1 - kept**2)
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = alpha_b * x1 + torch.sqrt((sigma_b**2 - s**2).clamp(min=0.0)) * eps + s * z
            states.append(x)
        return torch.stack(states)

    def _last_step(self, model_fn: ModelFn, x: Tensor, t_a: Tensor) -> Tensor:
        """From ``x`` at ``t_a = 1 - h`` to t = 1 with DDIM steps on the predicted x1.

        A DDIM step ``x' = alpha' x1_hat + sigma' (x - alpha x1_hat) / sigma`` gives
        ``x1_hat`` at t' = 1 (``alpha = 1, sigma = 0`` there for every scheduler): euler ends
        with ``x1_hat(x, t_a)`` (= its own last step for condOT). The other methods take a
        half DDIM step to ``t_b = 1 - h/2`` and extrapolate x1_hat linearly in sigma to
        sigma = 0: ``x1_b + (x1_b - x1_a) sigma_b / (sigma_a - sigma_b)`` (second order; for
        condOT exactly the midpoint step over [1 - h, 1]). A predictor that returns the true
        x1 lands on it exactly whatever the scheduler.
        """
        path = self.path

        def x1_hat(x: Tensor, t: Tensor) -> Tensor:
            t = t.expand(x.shape[0])
            return path.to_x1(model_fn(x, t), x, t)

        x1_a = x1_hat(x, t_a)
        if self.method == "euler":
            return x1_a
        t_b = (1 + t_a) / 2
        (alpha_a, sigma_a), (alpha_b, sigma_b) = path.alpha_sigma(t_a), path.alpha_sigma(t_b)
        x_b = alpha_b * x1_a + sigma_b * (x - alpha_a * x1_a) / sigma_a
        x1_b = x1_hat(x_b, t_b)
        return x1_b + (x1_b - x1_a) * sigma_b / (sigma_a - sigma_b)

    def _solve(self, velocity: ModelFn, x: Tensor, grid: Tensor) -> Tensor:
        """``x`` at every time of ``grid``: (len(grid), B, ...). Fixed-step methods step from
        one grid point to the next with flow_matching's ``ODESolver``. Adaptive ones choose
        their own steps between the grid's ends (the grid only says where to report the
        solution), through torchdiffeq itself: ODESolver passes no options, and without
        ``step_t`` they step past the end and interpolate back (network calls up to t = 1.9
        for dopri5, 5.8 for bosh3), without ``first_step`` the initial-step probe may too."""
        if not self.adaptive:
            solver = ODESolver(velocity_model=_VelocityModel(velocity))
            return solver.sample(
                x, None, method=self.method, time_grid=grid, return_intermediates=True
            )

        def func(t: Tensor, y: Tensor) -> Tensor:
            return velocity(y, _batch_t(t, y))

        options = {"step_t": grid[-1:], "first_step": ADAPTIVE_FIRST_STEP}
        return odeint(
            func, x, grid, method=self.method, atol=self.atol, rtol=self.rtol, options=options
        )


class HFDiffusionSampler:
    """DDIM or DDPM sampling with diffusers' schedulers, built from the path's own config.

    ``steps`` timesteps are visited (the path's ``timestep_spacing``: ``trailing`` starts at
    T - 1), and the scheduler steps over exactly those: it is built on the visited levels
    alone (their ``alphas_cumprod`` as ``trained_betas``, the respacing of improved DDPM), so
    each update lands on the next visited timestep and the last on the data. diffusers' DDIM
    alone steps to ``k - T // steps``, off by one from the next visited timestep when
    ``steps`` does not divide T (10 of 29 updates at 30 steps; at 64 it ends at k = 0, noisy),
    and it has no ``sigmoid`` betas (``trained_betas`` carries any schedule).

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
        if sampler_type not in DIFFUSION_SAMPLERS:
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
        self.grid = DDPMScheduler.from_config(path.scheduler.config)  # the visited timesteps

    def respaced(self, steps: int) -> tuple[DDIMScheduler | DDPMScheduler, Tensor]:
        """The scheduler over the ``steps`` visited levels, and those timesteps (``steps``,)
        of the path, descending: the scheduler's own timestep ``j`` is the path's
        ``timesteps[steps - 1 - j]``, and its step from ``j`` lands on ``j - 1``."""
        self.grid.set_timesteps(steps)
        timesteps = self.grid.timesteps
        alphas_cumprod = self.path.scheduler.alphas_cumprod[timesteps.flip(0)].double()
        previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        cls = DDIMScheduler if self.sampler_type == "ddim" else DDPMScheduler
        scheduler = cls.from_config(
            self.path.scheduler.config,
            num_train_timesteps=steps,
            trained_betas=(1 - alphas_cumprod / previous).tolist(),
            timestep_spacing="trailing",  # with T = steps: every level, steps - 1 down to 0
        )
        # the path's own levels: float32 betas near 1 lose 1 - beta (the top level's ratio)
        scheduler.alphas_cumprod = alphas_cumprod.float()
        scheduler.set_timesteps(steps)
        return scheduler, timesteps

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        x_init: Tensor,
        steps: int,
        generator: torch.Generator | None = None,
        record: Record | None = None,
    ) -> Tensor:
        """Denoise ``x_init`` (B, 1, S, S) in ``steps`` steps from t = 0 to t = 1."""
        scheduler, timesteps = self.respaced(steps)
        x = x_init
        if record is not None:
            record(x)
        extra = {"eta": self.eta} if self.sampler_type == "ddim" else {}
        for j, k in zip(scheduler.timesteps, timesteps, strict=True):
            t = self.path.timestep_to_t(k.reshape(1)).expand(x.shape[0]).to(x.device)
            out = model_fn(x, t)
            x = scheduler.step(out, j, x, generator=generator, **extra).prev_sample
            if record is not None:
                record(x)
        return x
