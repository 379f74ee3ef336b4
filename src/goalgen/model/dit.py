"""Diffusion Transformer (DiT, Peebles & Xie 2023) with adaLN-Zero conditioning on time.

Shapes: input ``x`` (B, in_ch, S, S), time ``t`` (B,) float in [0, 1] (a 0-dim ``t`` is
broadcast), output (B, out_ch, S, S). ``S`` must be divisible by ``patch_size``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# In bf16 on the CPU, explicit attention (two matmuls + softmax) is ~2x faster than the flash
# kernel for this model's small heads (fwd+bwd, head_dim 32, 256 tokens; in fp32 the flash
# kernel is 2x faster), but it materialises the (B, H, N, N) scores: it is used up to this many
# score elements per call (64M = 128 MiB in bf16; the default model at batch 64 has 34M).
CPU_EXPLICIT_ATTENTION_MAX_SCORES = 2**26


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x * (1 + scale) + shift`` in one op. ``shift``/``scale`` (B, 1, D) come from a linear
    layer, so they carry the autocast dtype; ``x`` is cast to it first (the linear layer that
    follows would cast it anyway), which halves the memory traffic under mixed precision."""
    return torch.addcmul(shift, x.to(shift.dtype), 1 + scale)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for (B, H, N, d) inputs: SDPA (flash / memory-efficient
    kernels), except bf16 on the CPU while the scores stay small: explicit matmuls."""
    b, h, n, d = q.shape
    if (
        q.device.type != "cpu"
        or q.dtype != torch.bfloat16
        or b * h * n * k.shape[-2] > CPU_EXPLICIT_ATTENTION_MAX_SCORES
    ):
        return F.scaled_dot_product_attention(q, k, v)
    scores = torch.matmul(q * d**-0.5, k.transpose(-2, -1))
    return torch.matmul(scores.softmax(dim=-1), v)


def sincos_pos_embed_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding, (grid*grid, dim), row-major over patches."""
    if dim % 4:
        raise ValueError(f"DiT dim must be divisible by 4 for 2-D sin-cos embeddings, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    coords = torch.arange(grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")

    def embed(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed(yy), embed(xx)], dim=1).float()


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of ``t * 1000`` followed by a 2-layer MLP."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        angles = (t.float() * 1000.0)[:, None] * freqs[None]
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=-1))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        mods = self.ada_ln(c).unsqueeze(1).chunk(6, dim=-1)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        b, n, d = x.shape
        h = _modulate(self.norm1(x), shift1, scale1)
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        # x + gate * branch in one op; x (the residual stream) keeps its dtype (fp32)
        x = torch.addcmul(x, gate1, self.proj(attn))
        h = _modulate(self.norm2(x), shift2, scale2)
        return torch.addcmul(x, gate2, self.mlp(h))


class DiT(nn.Module):
    """DiT backbone.

    Args:
        in_ch: input channels (8 = 5 context + 2 coordinate + 1 noisy target).
        out_ch: output channels (1: velocity, epsilon or sample of the goal mask).
        image_size: side ``S`` of the square input.
        patch_size: side of each patch token.
        dim, depth, heads, mlp_ratio: transformer width, blocks, attention heads, MLP ratio.
        refine_channels: 0 (the plain DiT: each token decodes its own patch linearly), or the
            width of a full-resolution convolutional head: the tokens decode ``refine_channels``
            features per pixel, which three 3x3 convolutions read together with the input
            (context masks at full resolution) to produce the output. With large patches
            (8 px at 64 px) a linear decoder draws each patch on its own, so an object split
            over patches fragments and a 1-px wall inside a patch is easy to overlap; the head
            sees neighbouring patches and the walls pixel by pixel.
    """

    def __init__(
        self,
        in_ch: int = 8,
        out_ch: int = 1,
        image_size: int = 64,
        patch_size: int = 4,
        dim: int = 256,
        depth: int = 8,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        refine_channels: int = 0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} not divisible by patch_size {patch_size}")
        if dim % heads:
            raise ValueError(f"DiT dim {dim} not divisible by heads {heads}")
        self.in_ch, self.out_ch, self.patch = in_ch, out_ch, patch_size
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(in_ch, dim, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, self.grid), persistent=False)
        self.t_embed = TimestepEmbedder(dim)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        decoded = refine_channels or out_ch
        self.final_linear = nn.Linear(dim, patch_size * patch_size * decoded)
        self.refine = None
        if refine_channels:
            width = refine_channels
            self.refine = nn.Sequential(
                nn.Conv2d(decoded + in_ch, width, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(width, out_ch, 3, padding=1),
            )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        # adaLN-Zero: every residual branch and the output start at zero.
        for block in self.blocks:
            nn.init.zeros_(block.ada_ln[-1].weight)
            nn.init.zeros_(block.ada_ln[-1].bias)
        for layer in (self.final_ada_ln[-1], self.final_linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.refine is not None:  # the output starts at zero, as without the head
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)

    def embed_patches(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, dim): ``patch_embed`` (a Conv2d with kernel = stride = p,
        kept for its parameters and state-dict keys) as a reshape and one matmul. torch
        2.13's CPU bf16 convolution is wrong for kernel = stride >= 8 (relative error 1.1
        against fp32 at p = 8; p = 4 is right), so a patch-8 model trained under bf16
        autocast learnt on a wrong embedding and sampled garbage in fp32."""
        b, c, h, w = x.shape
        p = self.patch
        patches = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        weight = self.patch_embed.weight
        flat = patches.reshape(b, (h // p) * (w // p), c * p * p)
        return F.linear(flat, weight.view(weight.shape[0], -1), self.patch_embed.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        b = x.shape[0]
        t = t.expand(b) if t.dim() == 0 else t
        tokens = self.embed_patches(x) + self.pos_embed
        c = self.t_embed(t)
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.final_ada_ln(c).unsqueeze(1).chunk(2, dim=-1)
        out = self.final_linear(_modulate(self.final_norm(tokens), shift, scale))
        p, g = self.patch, self.grid
        channels = out.shape[-1] // (p * p)
        if self.refine is None:
            out = out.view(b, g, g, p, p, channels).permute(0, 5, 1, 3, 2, 4)
            return out.reshape(b, channels, g * p, g * p)
        # The head runs channels-last (2-3x faster CPU convolutions in bf16, fwd + bwd, and no
        # slower on CUDA): its input is assembled as (B, H, W, C) and viewed as NCHW, which
        # saves two layout copies of the largest activation (a third of a CPU forward's copies)
        pixels = out.view(b, g, g, p, p, channels).permute(0, 1, 3, 2, 4, 5)
        pixels = pixels.reshape(b, g * p, g * p, channels)
        features = torch.cat([pixels, x.permute(0, 2, 3, 1).to(out.dtype)], dim=-1)
        return self.refine(features.permute(0, 3, 1, 2))
