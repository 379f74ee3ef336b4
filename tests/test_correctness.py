"""Numerical correctness of sampling, training losses and metrics, against exact answers.

Oracles: a "network" that returns the true target for a point mass at ``x_1`` (the x1 itself,
or the velocity / epsilon / v of the current ``x`` towards it) must make every sampler land on
``x_1``; recording networks check the times a sampler evaluates at.
"""

from __future__ import annotations

import hydra
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torchdiffeq import odeint

from conftest import compose_config
from goalgen.eval.metrics import SceneMasks, score_samples
from goalgen.model.dit import DiT
from goalgen.model.generative import GenerativeModel
from goalgen.model.paths import (
    BETA_SCHEDULES,
    FLOW_SCHEDULERS,
    PREDICTION_TYPES,
    FBFlowMatchingPath,
    HFDiffusionPath,
)
from goalgen.model.samplers import (
    ADAPTIVE_METHODS,
    FIXED_STEP_METHODS,
    STOCHASTIC_METHODS,
    FBODESampler,
    HFDiffusionSampler,
)

S = 16
ODE_METHODS = FIXED_STEP_METHODS + ADAPTIVE_METHODS
FLOW_METHODS = ODE_METHODS + STOCHASTIC_METHODS


def tiny_net() -> DiT:
    return DiT(in_ch=8, out_ch=1, image_size=S, patch_size=4, dim=32, depth=1, heads=2)


def goal(b: int = 2) -> torch.Tensor:
    """(B, 1, S, S) targets inside (-1, 1), so the samplers' final clamp hides no error."""
    g = torch.Generator().manual_seed(3)
    return torch.rand(b, 1, S, S, generator=g) * 1.6 - 0.8


def flow_model(scheduler: str, prediction: str, method: str, predict) -> GenerativeModel:
    path = FBFlowMatchingPath(scheduler=scheduler, prediction=prediction)
    model = GenerativeModel(tiny_net(), path, FBODESampler(method=method))
    model.predict = predict  # replaces the network: (x, t, context, network) -> output
    return model


def flow_oracle(path: FBFlowMatchingPath, x_1: torch.Tensor):
    """The exact network output for a point mass at ``x_1``: x1, or the conditional velocity
    ``alpha' x1 + sigma' x0`` with ``x0 = (x - alpha x1) / sigma``."""

    def predict(x, t, context, network=None):
        if path.prediction == "x1":
            return x_1.expand_as(x)
        out = path.path.scheduler(t.double().view(-1, 1, 1, 1))
        x_0 = (x.double() - out.alpha_t * x_1) / out.sigma_t
        return (out.d_alpha_t * x_1 + out.d_sigma_t * x_0).float()

    return predict


def draw(model: GenerativeModel, steps: int = 20) -> torch.Tensor:
    context = torch.zeros(2, 5, S, S)
    return model.sample(context, steps=steps, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- flow: oracle
@pytest.mark.parametrize("method", FLOW_METHODS)
@pytest.mark.parametrize("scheduler", FLOW_SCHEDULERS)
@pytest.mark.parametrize("prediction", ["x1", "velocity"])
def test_flow_oracle_lands_on_x1(prediction, scheduler, method):
    """Before: x1 prediction, midpoint 20 steps missed by 0.045 (vp) and 0.32 (linear_vp);
    velocity prediction evaluated the singular velocity at t = 1 (rk4: NaN)."""
    if method in STOCHASTIC_METHODS and prediction != "x1":
        with pytest.raises(ValueError, match="prediction=x1"):
            flow_model(scheduler, prediction, method, None)
        return
    x_1 = goal()
    path = FBFlowMatchingPath(scheduler=scheduler, prediction=prediction)
    model = flow_model(scheduler, prediction, method, flow_oracle(path, x_1))
    assert (draw(model) - x_1).abs().max() < 1e-4


def exact_x1_solution(scheduler: str, guess, x_init: torch.Tensor) -> torch.Tensor:
    """The ODE of an x1 predictor ``guess(x)`` solved independently of the sampler: float64
    dopri5 at tolerance 1e-10 up to t = 1 - 1e-6, then the predicted x1 there."""
    path = FBFlowMatchingPath(scheduler=scheduler, prediction="x1").path

    def velocity(t, x):
        return path.target_to_velocity(x_1=guess(x), x_t=x, t=t.expand(x.shape[0], 1, 1, 1))

    end = torch.tensor([0.0, 1.0 - 1e-6], dtype=torch.float64)
    x = odeint(velocity, x_init.double(), end, method="dopri5", atol=1e-10, rtol=1e-10)[-1]
    return guess(x)


@pytest.mark.parametrize("scheduler", FLOW_SCHEDULERS)
def test_flow_samplers_converge_to_the_exact_ode_solution(scheduler):
    """An imperfect x1 predictor (its guess depends on x): the samplers match the exact ODE
    solution. Before: midpoint/rk4/dopri5 were 0.07 off for vp and 0.4 for linear_vp."""
    target = torch.linspace(-1, 1, 2 * S * S).reshape(2, 1, S, S).double()

    def guess(x):
        return torch.tanh(0.1 * x + target)

    x_init = torch.randn((2, 1, S, S), generator=torch.Generator().manual_seed(0))
    exact = exact_x1_solution(scheduler, guess, x_init)
    for method, steps, tol in [("midpoint", 20, 0.02), ("rk4", 20, 0.02), ("dopri5", 0, 0.02)]:
        model = flow_model(scheduler, "x1", method, lambda x, t, c, network=None: guess(x).float())
        assert (draw(model, steps) - exact).abs().max() < tol, method


# ----------------------------------------------------------------------------- flow: times
def recording(predict, seen: list[float]):
    def record(x, t, context, network=None):
        assert t.shape == (x.shape[0],)
        seen.extend(t.tolist())
        return predict(x, t, context, network)

    return record


@pytest.mark.parametrize("method", FLOW_METHODS)
@pytest.mark.parametrize("scheduler", FLOW_SCHEDULERS)
@pytest.mark.parametrize("prediction", ["x1", "velocity"])
def test_flow_network_only_sees_times_in_0_1(prediction, scheduler, method):
    """Before: adaptive solvers stepped past t = 1 and interpolated back (dopri5 up to 1.9,
    bosh3 5.8), and torchdiffeq's first-step probe reached t = 26 for a near-zero output."""
    if method in STOCHASTIC_METHODS and prediction != "x1":
        return  # refused (test_flow_oracle_lands_on_x1)
    for scale in (1.0, 1e-3):  # 1e-3: a near-zero output, as of an untrained network
        seen: list[float] = []

        def output(x, t, context, network=None, scale=scale):
            return scale * torch.tanh(x)

        draw(flow_model(scheduler, prediction, method, recording(output, seen)))
        assert min(seen) >= 0.0 and max(seen) < 1.0, (min(seen), max(seen))


# ----------------------------------------------------------------------------- diffusion
def diffusion_oracle(path: HFDiffusionPath, x_1: torch.Tensor, seen: list):
    """The exact epsilon / v / sample for a point mass at ``x_1``; records (k, implied noise)."""
    alphas_cumprod = path.scheduler.alphas_cumprod.double()

    def predict(x, t):
        k = path.t_to_timestep(t)
        a = alphas_cumprod[k].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas_cumprod[k]).sqrt().view(-1, 1, 1, 1)
        eps = (x.double() - a * x_1) / s
        seen.append((int(k[0]), eps))
        if path.prediction_type == "epsilon":
            return eps.float()
        return (a * eps - s * x_1).float() if path.prediction_type == "v_prediction" else x_1

    return predict


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("steps", [30, 64])
def test_ddim_steps_land_on_the_next_visited_timestep(steps, prediction_type):
    """Each DDIM update must land on the noise level of the next visited timestep: with an
    oracle every call then sees x = sqrt(a_k) x1 + sqrt(1 - a_k) eps with the initial eps.
    Before: diffusers stepped to k - 1000 // steps (off by one at 10 of 29 steps for 30:
    the implied eps drifted by 0.19; at 64 the last step ended at k = 0, 0.03 off)."""
    path = HFDiffusionPath(prediction_type=prediction_type)
    sampler = HFDiffusionSampler("ddim")
    sampler.attach(path)
    x_1, seen = goal(), []
    x_init = torch.randn(x_1.shape, generator=torch.Generator().manual_seed(0))
    out = sampler.sample(diffusion_oracle(path, x_1, seen), x_init, steps)
    visited = [k for k, _ in seen]
    assert len(visited) == steps and visited[0] == 999
    assert visited == sorted(set(visited), reverse=True)
    eps_0 = seen[0][1]
    drift = max((eps - eps_0).abs().max().item() for _, eps in seen)
    assert drift < 1e-3  # eps oracle at k = 999: float32 x amplified by 1 / sqrt(a) = 2e4
    assert (out - x_1).abs().max() < 1e-5


@pytest.mark.parametrize(
    "sampler_type,steps,eta", [("ddim", 50, 0.0), ("ddim", 20, 1.0), ("ddpm", 30, 0.0)]
)
def test_diffusion_sampler_matches_diffusers_where_its_grid_is_consistent(sampler_type, steps, eta):
    """Steps dividing T (DDIM) and DDPM at any steps: the same numbers as diffusers itself."""
    path = HFDiffusionPath(beta_schedule="linear")
    sampler = HFDiffusionSampler(sampler_type, eta=eta)
    sampler.attach(path)

    def fn(x, t):
        return 0.5 * torch.tanh(x) + t.view(-1, 1, 1, 1)

    x_init = torch.randn((2, 1, S, S), generator=torch.Generator().manual_seed(0))
    ours = sampler.sample(fn, x_init, steps, generator=torch.Generator().manual_seed(1))
    cls = DDIMScheduler if sampler_type == "ddim" else DDPMScheduler
    ref = cls.from_config(path.scheduler.config)
    ref.set_timesteps(steps)
    x, g = x_init, torch.Generator().manual_seed(1)
    extra = {"eta": eta} if sampler_type == "ddim" else {}
    for k in ref.timesteps:
        out = fn(x, path.timestep_to_t(k.reshape(1)).expand(2))
        x = ref.step(out, k, x, generator=g, **extra).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-6, rtol=0)


TINY = ["image_size=16", "model.network.dim=32", "model.network.depth=1"]
TINY += ["model.network.heads=2", "model.network.patch_size=4", "run_name=x"]


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("sampler_type", ["ddim", "ddpm"])
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_every_diffusion_config_trains_and_samples(beta_schedule, sampler_type, prediction_type):
    """Before: beta_schedule=sigmoid with the default DDIM sampler raised NotImplementedError
    (diffusers' DDIMScheduler has no sigmoid betas)."""
    cfg = compose_config(
        "train_hf_diffusion",
        TINY
        + [
            f"model.path.beta_schedule={beta_schedule}",
            f"model.sampler.sampler_type={sampler_type}",
            f"model.path.prediction_type={prediction_type}",
        ],
    )
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    context = (torch.rand(4, 5, S, S) > 0.7).float() * 2 - 1
    x_1 = -torch.ones(4, 1, S, S)
    x_1[:, :, 4:9, 5:11] = 1
    for step in range(2):
        noise, t = model.path.draw(x_1, torch.Generator().manual_seed(step))
        loss = model(context, x_1, noise, t)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    out = model.sample(context, steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == x_1.shape and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- metrics
def test_sub_pixel_truth_falls_back_to_its_best_pixel():
    """A goal smaller than a pixel (soft max 0.3) is not an empty truth: an empty sample must
    not score IoU 1 against it. Before: iou(empty, empty) = 1 and hit = 1."""
    context = np.zeros((5, S, S), dtype=np.float32)
    context[2, 2:6, 2:6] = context[4, 2:6, 2:6] = 1.0  # the selected object
    context[3, 0, :] = context[3, -1, :] = context[3, :, 0] = context[3, :, -1] = 1.0
    truth = np.zeros((S, S), dtype=np.float32)
    truth[9, 9], truth[9, 10] = 0.3, 0.1
    scene = SceneMasks.from_soft(context, truth)
    assert scene.truth.sum() == 1 and scene.truth[9, 9]
    empty, on_it = np.zeros((1, S, S), dtype=bool), np.zeros((1, S, S), dtype=bool)
    on_it[0, 9, 9] = True
    assert score_samples(empty, scene)["best_iou"] == 0.0
    assert score_samples(empty, scene)["hit"] == 0.0
    assert score_samples(on_it, scene)["best_iou"] == 1.0


# ----------------------------------------------------------------------------- trajectories
@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "dopri5"])
def test_flow_trajectory_follows_the_conditional_path_of_an_oracle(method):
    """With an x1 oracle every state of a condOT trajectory is ``(1 - t) x0 + t x1`` at its
    time (fixed steps: k / steps; adaptive: uniform up to 1 - ADAPTIVE_LAST_STEP, then 1),
    the first is the noise, the last the returned sample; recording changes nothing."""
    steps, x_1 = 10, goal()
    path = FBFlowMatchingPath(scheduler="condot", prediction="x1")
    model = flow_model("condot", "x1", method, flow_oracle(path, x_1))
    states: list[torch.Tensor] = []
    x_init = torch.randn(x_1.shape, generator=torch.Generator().manual_seed(0))
    out = model.sampler.sample(lambda x, t: x_1.expand_as(x), x_init, steps, record=states.append)
    assert len(states) == steps + 1
    if method in ADAPTIVE_METHODS:
        times = torch.cat([torch.linspace(0, 0.95, steps), torch.ones(1)])
    else:
        times = torch.linspace(0, 1, steps + 1)
    for t, state in zip(times, states, strict=True):
        assert (state - ((1 - t) * x_init + t * x_1)).abs().max() < 1e-4, float(t)
    assert torch.equal(states[0], x_init) and torch.equal(states[-1], out)
    assert torch.equal(out, model.sampler.sample(lambda x, t: x_1.expand_as(x), x_init, steps))


def test_ancestral_at_eta_0_is_euler_for_condot():
    """DDIM's deterministic step on the predicted x1 is euler's step of condOT's velocity
    (x1 - x) / (1 - t): the same trajectory as flow_matching's own euler solver, for an
    imperfect predictor whose guess depends on x."""
    target = torch.linspace(-1, 1, 2 * S * S).reshape(2, 1, S, S)

    def guess(x, t):
        return torch.tanh(0.5 * x + target)

    x_init = torch.randn((2, 1, S, S), generator=torch.Generator().manual_seed(0))
    path = FBFlowMatchingPath(scheduler="condot", prediction="x1")
    ancestral, euler = FBODESampler("ancestral", eta=0.0), FBODESampler("euler")
    runs = []
    for sampler in (ancestral, euler):
        sampler.attach(path)
        states: list[torch.Tensor] = []
        sampler.sample(guess, x_init, 8, record=states.append)
        runs.append(torch.stack(states))
    assert runs[0].shape == runs[1].shape == (9, 2, 1, S, S)
    assert (runs[0] - runs[1]).abs().max() < 1e-5


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("scheduler", FLOW_SCHEDULERS)
def test_ancestral_states_stay_on_the_paths_marginals_with_an_oracle(scheduler, eta):
    """With an exact x1 predictor every state at time t is ``alpha_t x1 + sigma_t z`` with
    ``z`` standard normal (the posterior step preserves the path's marginals), the last is
    x1; a seeded generator repeats a draw, another seed does not."""
    steps, x_1 = 6, torch.zeros(4, 1, 32, 32).uniform_(-0.8, 0.8, generator=torch.Generator())
    path = FBFlowMatchingPath(scheduler=scheduler, prediction="x1")
    sampler = FBODESampler("ancestral", eta=eta)
    sampler.attach(path)
    x_init = torch.randn(x_1.shape, generator=torch.Generator().manual_seed(1))
    states: list[torch.Tensor] = []

    def run(seed, record=None):
        gen = torch.Generator().manual_seed(seed)
        return sampler.sample(lambda x, t: x_1, x_init, steps, gen, record)

    out = run(0, states.append)
    assert torch.equal(out, x_1) and len(states) == steps + 1
    for t, state in zip(torch.linspace(0, 1, steps + 1)[1:-1], states[1:-1], strict=True):
        alpha, sigma = path.alpha_sigma(t)
        z = (state - alpha * x_1) / sigma
        assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05, float(t)
    later: list[torch.Tensor] = []
    run(0, later.append)
    again: list[torch.Tensor] = []
    run(1, again.append)
    assert torch.equal(states[2], later[2]) and not torch.equal(states[2], again[2])


@pytest.mark.parametrize("sampler_type", ["ddim", "ddpm"])
def test_diffusion_trajectory_states_are_the_visited_noise_levels(sampler_type):
    """DDIM with an epsilon oracle: state j is ``sqrt(a_k) x1 + sqrt(1 - a_k) eps`` at the
    j-th visited timestep k (the initial eps), the last is x1; DDPM: steps + 1 states, the
    first the noise, the last the sample."""
    steps, x_1, seen = 30, goal(), []
    path = HFDiffusionPath(prediction_type="epsilon")
    sampler = HFDiffusionSampler(sampler_type)
    sampler.attach(path)
    x_init = torch.randn(x_1.shape, generator=torch.Generator().manual_seed(0))
    states: list[torch.Tensor] = []
    out = sampler.sample(
        diffusion_oracle(path, x_1, seen),
        x_init,
        steps,
        generator=torch.Generator().manual_seed(1),
        record=states.append,
    )
    assert len(states) == steps + 1
    assert torch.equal(states[0], x_init) and torch.equal(states[-1], out)
    if sampler_type == "ddpm":
        return
    a = path.scheduler.alphas_cumprod.double()
    eps = seen[0][1]
    for (k, _), state in zip(seen, states[:-1], strict=True):
        expected = a[k].sqrt() * x_1 + (1 - a[k]).sqrt() * eps
        assert (state - expected).abs().max() < 1e-3, k


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_min_snr_weight_counts_the_x0_error_min_snr_gamma_times(prediction_type):
    """Min-SNR-gamma: weight x (target error)^2 = min(SNR, gamma) x (x0 error)^2 for every
    prediction type, the x0 error being that of the x0 the prediction implies."""
    path = HFDiffusionPath(prediction_type=prediction_type, snr_gamma=5.0)
    x_1, g = goal(4), torch.Generator().manual_seed(0)
    noise = torch.randn(x_1.shape, generator=g)
    t = path.timestep_to_t(torch.tensor([0, 100, 500, 999]))
    x_t, t_net, target = path.sample(x_1.double(), noise.double(), t)
    prediction = target + 0.01 * torch.randn(x_1.shape, generator=g).double()
    target_error = ((prediction - target) ** 2).flatten(1).mean(1)
    x0_error = ((path.to_x1(prediction, x_t, t_net) - x_1) ** 2).flatten(1).mean(1)
    a = path.scheduler.alphas_cumprod.double()[path.t_to_timestep(t_net)]
    snr = a / (1 - a)
    weighted = path.loss_weight(t_net).double() * target_error
    assert torch.allclose(weighted, snr.clamp(max=5.0) * x0_error, rtol=1e-3)
    assert HFDiffusionPath(prediction_type=prediction_type).loss_weight(t_net) is None


def test_epsilon_skip_turns_the_v_target_into_the_exact_noise():
    """``epsilon_skip``: eps_hat = sigma x_t + alpha F, so F = v (= alpha eps - sigma x0,
    diffusers' get_velocity) gives eps exactly, and the implied x0 is alpha x_t - sigma F
    (no 1/alpha amplification of F's error)."""
    path = HFDiffusionPath(prediction_type="epsilon", epsilon_skip=True)
    x_1, g = goal(4).double(), torch.Generator().manual_seed(0)
    noise = torch.randn(x_1.shape, generator=g).double()
    k = torch.tensor([0, 100, 500, 999])
    x_t, t_net, target = path.sample(x_1, noise, path.timestep_to_t(k))
    v = path.scheduler.get_velocity(x_1, noise, k)
    assert torch.allclose(path.output(v, x_t, t_net), noise, atol=1e-6)
    error = torch.randn(x_1.shape, generator=g).double()
    x0_hat = path.to_x1(path.output(v + error, x_t, t_net), x_t, t_net)
    sigma = (1 - path.scheduler.alphas_cumprod.double()[k]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(x0_hat - x_1, -sigma * error, atol=1e-3)  # float32 alphas at 999
    other = HFDiffusionPath(prediction_type="sample", epsilon_skip=True)
    assert torch.equal(other.output(v, x_t, t_net), v)  # only epsilon is re-parametrized


def test_dice_weight_undoes_the_gain_of_the_x1_conversion():
    """The dice term on x1_hat = to_x1(prediction) is weighted min(1, 1/g^2), g the gain of
    that conversion: epsilon g = sigma / alpha (so min(1, SNR)), v g = sigma, sample 1."""
    from goalgen.model.generative import aux_weight

    k = torch.tensor([0, 100, 500, 900, 999])
    for prediction_type in PREDICTION_TYPES:
        path = HFDiffusionPath(prediction_type=prediction_type, epsilon_skip=False)
        a = path.scheduler.alphas_cumprod[k]
        expected = {
            "epsilon": (a / (1 - a)).clamp(max=1),
            "v_prediction": (1 / (1 - a)).clamp(max=1),
            "sample": torch.ones(len(k)),
        }[prediction_type]
        got = aux_weight(path, path.timestep_to_t(k))
        assert torch.allclose(got, expected, rtol=1e-3), prediction_type
    skip = HFDiffusionPath(prediction_type="epsilon", epsilon_skip=True)  # as plain epsilon
    a = skip.scheduler.alphas_cumprod[k]
    assert torch.allclose(aux_weight(skip, skip.timestep_to_t(k)), (a / (1 - a)).clamp(max=1))
