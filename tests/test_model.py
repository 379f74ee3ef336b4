"""DiT, paths and samplers: shapes, library conventions, and config mismatch errors."""

from __future__ import annotations

import pytest
import torch

from goalgen.model.dit import DiT
from goalgen.model.generative import GenerativeModel, soft_dice_loss
from goalgen.model.paths import FLOW_SCHEDULERS, FBFlowMatchingPath, HFDiffusionPath
from goalgen.model.samplers import FBODESampler, HFDiffusionSampler

S = 16


def tiny_net() -> DiT:
    return DiT(in_ch=8, out_ch=1, image_size=S, patch_size=4, dim=32, depth=1, heads=2)


def masks(b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    context = (torch.rand(b, 5, S, S, generator=g) > 0.7).float() * 2 - 1
    x_1 = -torch.ones(b, 1, S, S)
    x_1[:, :, 4:9, 5:11] = 1
    return context, x_1


def test_dit_shapes_and_zero_init_output():
    net = tiny_net()
    x = torch.randn(2, 8, S, S)
    out = net(x, torch.tensor([0.1, 0.9]))
    assert out.shape == (2, 1, S, S)
    assert torch.all(out == 0), "adaLN-Zero: the untrained network outputs zeros"
    assert net(x, torch.tensor(0.5)).shape == (2, 1, S, S), "0-dim t is broadcast"


def test_dit_rejects_bad_geometry():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        DiT(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="heads"):
        DiT(dim=30, heads=4)


@pytest.mark.parametrize("patch", [2, 4, 8, 16])
def test_patch_embedding_is_the_convolution_and_right_in_bf16(patch):
    """The patch embedding equals F.conv2d with the layer's weights (fp32), and under CPU
    bf16 autocast stays within bf16 rounding of it. torch 2.13's CPU bf16 Conv2d itself is
    off by 110 % at kernel = stride >= 8, which made patch-8 bf16 runs sample garbage."""
    net = DiT(in_ch=8, out_ch=1, image_size=32, patch_size=patch, dim=64, depth=1, heads=2)
    torch.nn.init.normal_(net.patch_embed.bias)
    x = torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    conv = torch.nn.functional.conv2d(x, net.patch_embed.weight, net.patch_embed.bias, patch)
    reference = conv.flatten(2).transpose(1, 2)
    assert torch.allclose(net.embed_patches(x), reference, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net.embed_patches(x).float()
    assert ((low - reference).norm() / reference.norm()).item() < 0.02


def test_refine_head_starts_at_zero_and_reads_the_input_pixel_by_pixel():
    """The conv head (``refine_channels``) keeps the zero output at init; once trained it
    sees each input pixel within its 7x7 receptive field (three 3x3 convolutions), across
    patch borders, and agrees with itself under CPU bf16 autocast (channels-last convs)."""
    net = DiT(
        in_ch=8, out_ch=1, image_size=32, patch_size=8, dim=32, depth=1, heads=2, refine_channels=8
    )
    x = torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, 0.7])
    assert torch.all(net(x, t) == 0)
    for conv in net.refine[::2]:
        torch.nn.init.normal_(conv.weight, std=0.3)
    poked = x.clone()
    poked[:, :, 7, 8] += 1.0  # a pixel on a patch border
    changed = (net(poked, t) - net(x, t)).abs()[:, 0] > 0
    rows, cols = changed.nonzero()[:, 1:].T
    assert changed.any() and rows.min() >= 4 and rows.max() <= 10
    assert cols.min() >= 5 and cols.max() <= 11 and (cols < 8).any()
    torch.nn.init.normal_(net.final_linear.weight, std=0.1)
    torch.nn.init.normal_(net.final_ada_ln[-1].weight, std=0.1)
    reference = net(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x, t).float()
    assert ((low - reference).norm() / reference.norm()).item() < 0.02
    # the head's input, assembled channels-last, is the decoded patches next to the input
    decoded = {}
    net.refine.register_forward_pre_hook(lambda _, args: decoded.update(features=args[0]))
    net(x, t)
    features = decoded["features"]
    assert features.shape == (2, 16, 32, 32)
    assert features.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(features[:, 8:], x, rtol=0, atol=0)
    tokens = net.embed_patches(x) + net.pos_embed
    c = net.t_embed(t)
    for block in net.blocks:
        tokens = block(tokens, c)
    shift, scale = net.final_ada_ln(c).unsqueeze(1).chunk(2, dim=-1)
    out = net.final_linear(torch.addcmul(shift, net.final_norm(tokens), 1 + scale))
    patches = out.view(2, 4, 4, 8, 8, 8)  # (B, grid, grid, p, p, channels)
    torch.testing.assert_close(features[:, :8, 8:16, 16:24], patches[:, 1, 2].permute(0, 3, 1, 2))


def test_dit_patches_are_position_aware():
    net = tiny_net()
    torch.nn.init.normal_(net.final_linear.weight)
    torch.nn.init.normal_(net.final_ada_ln[-1].weight)
    out = net(torch.zeros(1, 8, S, S), torch.tensor([0.5]))
    # same (zero) input everywhere: only position embeddings can make patches differ
    assert out[0, 0, :4, :4].sub(out[0, 0, 8:12, 8:12]).abs().max() > 0


@pytest.mark.parametrize("scheduler", FLOW_SCHEDULERS)
@pytest.mark.parametrize("prediction", ["velocity", "x1"])
def test_flow_path_reconstructs_x1_from_the_true_target(scheduler, prediction):
    path = FBFlowMatchingPath(scheduler=scheduler, prediction=prediction)
    _, x_1 = masks()
    noise, t = path.draw(x_1, torch.Generator().manual_seed(1))
    assert t.min() >= 0 and t.max() < 1
    x_t, t_net, target = path.sample(x_1, noise, t)
    assert torch.equal(t_net, t)
    torch.testing.assert_close(path.to_x1(target, x_t, t), x_1, atol=2e-3, rtol=1e-3)
    velocity = path.path.sample(x_0=noise, x_1=x_1, t=t).dx_t
    torch.testing.assert_close(
        path.to_sampler_output(target, x_t, t), velocity, atol=2e-3, rtol=1e-3
    )


@pytest.mark.parametrize("scheduler", ["condot", "cosine"])
def test_x1_prediction_oracle_integrates_to_the_data(scheduler):
    path = FBFlowMatchingPath(scheduler=scheduler, prediction="x1")
    model = GenerativeModel(tiny_net(), path, FBODESampler(method="midpoint"))
    context, x_1 = masks(2)
    model.predict = lambda x, t, c, network=None: x_1  # a perfect x1 predictor
    out = model.sample(context, steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x_1, atol=2e-2, rtol=0)


@pytest.mark.parametrize(
    "method,steps,expected_calls", [("rk4", 5, 18), ("dopri5", 10, None), ("midpoint", 5, 10)]
)
def test_x1_prediction_stays_accurate_for_solvers_that_evaluate_at_t1(
    method, steps, expected_calls
):
    """An imperfect x1 predictor (its guess depends on x): rk4's last stage and dopri5 evaluate
    at t = 1, where the converted velocity (x1_hat - x) / (1 - t) amplifies the stage's error
    ~1000x; those samplers must still match a fine Euler solution."""
    path = FBFlowMatchingPath(prediction="x1")
    target = torch.linspace(-1, 1, 2 * S * S).reshape(2, 1, S, S)
    calls = []

    def guess(x, t, c, network=None):
        calls.append(1)
        return torch.tanh(0.1 * x + target)

    def run(sampler, n):
        model = GenerativeModel(tiny_net(), path, sampler)
        model.predict = guess
        context, _ = masks(2)
        return model.sample(context, steps=n, generator=torch.Generator().manual_seed(0))

    reference = run(FBODESampler(method="euler"), 1000)
    calls.clear()
    out = run(FBODESampler(method=method, atol=1e-4, rtol=1e-4), steps)
    assert (out - reference).abs().max() < 0.02  # 1.25 for rk4 integrating up to t = 1
    if expected_calls is not None:  # rk4: 4 per step, but the last step is a midpoint one
        assert len(calls) == expected_calls


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusion_path_reconstructs_x1_from_true_target(prediction_type):
    path = HFDiffusionPath(prediction_type=prediction_type, beta_schedule="linear")
    _, x_1 = masks()
    noise = torch.randn_like(x_1)
    t = torch.tensor([0.9, 0.5, 0.2])  # k = 100, 500, 800
    x_t, t_net, target = path.sample(x_1, noise, t)
    torch.testing.assert_close(t_net, t)
    torch.testing.assert_close(path.to_x1(target, x_t, t), x_1, atol=1e-3, rtol=1e-3)
    if prediction_type == "epsilon":
        assert torch.equal(target, noise)


def test_diffusion_time_maps_data_to_t1():
    path = HFDiffusionPath()
    k = torch.tensor([0, 999])
    assert path.timestep_to_t(k).tolist() == pytest.approx([1.0, 0.001], abs=1e-6)
    assert torch.equal(path.t_to_timestep(path.timestep_to_t(k)), k)


def test_unknown_names_are_refused_with_the_config_key():
    with pytest.raises(ValueError, match="model.path.scheduler"):
        FBFlowMatchingPath(scheduler="karras")
    with pytest.raises(ValueError, match="model.path.prediction"):
        FBFlowMatchingPath(prediction="epsilon")
    with pytest.raises(ValueError, match="model.sampler.method"):
        FBODESampler(method="leapfrog")
    with pytest.raises(ValueError, match="model.path.beta_schedule"):
        HFDiffusionPath(beta_schedule="cosine")
    with pytest.raises(ValueError, match="sampler_type"):
        HFDiffusionSampler(sampler_type="dpm")


def test_mismatched_sampler_and_path_fail_at_build():
    with pytest.raises(ValueError, match="beta_schedule"):
        GenerativeModel(
            tiny_net(),
            HFDiffusionPath(beta_schedule="linear"),
            HFDiffusionSampler(beta_schedule="squaredcos_cap_v2"),
        )
    with pytest.raises(ValueError, match="flow path"):
        GenerativeModel(tiny_net(), FBFlowMatchingPath(), HFDiffusionSampler())
    with pytest.raises(ValueError, match="diffusion path"):
        GenerativeModel(tiny_net(), HFDiffusionPath(), FBODESampler())
    with pytest.raises(ValueError, match="DDIM only"):
        HFDiffusionSampler(sampler_type="ddpm", eta=1.0)


class ConstantVelocity:
    """model_fn with a known flow: x(t) = x0 + t * (target - noise-free offset)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t):
        assert t.shape == (x.shape[0],), "the solver's 0-dim t must reach us as (B,)"
        self.calls += 1
        return torch.ones_like(x) * 2 * t.view(-1, 1, 1, 1)  # dx/dt = 2t -> x1 = x0 + 1


@pytest.mark.parametrize(
    "method,expected_calls", [("euler", 8), ("midpoint", 16), ("rk4", 32), ("dopri5", None)]
)
def test_ode_sampler_integrates_known_flow(method, expected_calls):
    fn = ConstantVelocity()
    x0 = torch.zeros(2, 1, 4, 4)
    x1 = FBODESampler(method=method).sample(fn, x0, steps=8)
    atol = 0.13 if method == "euler" else 1e-4  # euler is first order: error = 1/steps
    torch.testing.assert_close(x1, torch.ones_like(x1), atol=atol, rtol=0)
    if expected_calls is not None:
        assert fn.calls == expected_calls


@pytest.mark.parametrize("sampler_type", ["ddim", "ddpm"])
def test_diffusion_sampler_with_oracle_recovers_x1(sampler_type):
    path = HFDiffusionPath()
    sampler = HFDiffusionSampler(sampler_type=sampler_type)
    sampler.attach(path)
    _, x_1 = masks(2)

    def oracle_eps(x, t):  # the exact epsilon for a point mass at x_1
        k = path.t_to_timestep(t)
        a = path.scheduler.alphas_cumprod[k].view(-1, 1, 1, 1)
        return (x - a.sqrt() * x_1) / (1 - a).sqrt()

    g = torch.Generator().manual_seed(0)
    out = sampler.sample(oracle_eps, torch.randn(x_1.shape, generator=g), steps=10, generator=g)
    torch.testing.assert_close(out, x_1, atol=0.05, rtol=0)


def test_ddim_eta0_is_deterministic_and_ddpm_is_not():
    path = HFDiffusionPath()
    _, x_1 = masks(1)
    x_init = torch.randn(x_1.shape, generator=torch.Generator().manual_seed(0))

    def run(kind, seed):
        sampler = HFDiffusionSampler(sampler_type=kind)
        sampler.attach(path)
        return sampler.sample(
            lambda x, t: torch.zeros_like(x) + 0.1,
            x_init.clone(),
            5,
            generator=torch.Generator().manual_seed(seed),
        )

    assert torch.equal(run("ddim", 1), run("ddim", 2))
    assert not torch.equal(run("ddpm", 1), run("ddpm", 2))


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_generative_model_loss_and_sample(family):
    path = FBFlowMatchingPath() if family == "flow" else HFDiffusionPath()
    sampler = FBODESampler(method="euler") if family == "flow" else HFDiffusionSampler()
    model = GenerativeModel(tiny_net(), path, sampler, aux_loss_weight=0.5)
    context, x_1 = masks()
    noise, t = path.draw(x_1, torch.Generator().manual_seed(0))
    losses = model(context, x_1, noise, t)
    assert set(losses) == {"loss", "mse", "dice"}
    torch.testing.assert_close(losses["loss"], losses["mse"] + 0.5 * losses["dice"])
    losses["loss"].backward()
    assert model.network.final_linear.weight.grad.abs().sum() > 0
    out = model.sample(context, steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == x_1.shape and out.abs().max() <= 1


def test_soft_dice_loss_values():
    _, x_1 = masks(1)
    assert soft_dice_loss(x_1, x_1).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(-torch.ones_like(x_1), x_1).item() > 0.95
