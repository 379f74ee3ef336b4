"""Mixed precision: map Lightning's precision names to an autocast dtype and a grad scaler, for
training (``trainer.precision``) and inference (:func:`inference_precision`); TF32 matmuls on
GPUs (:func:`use_tf32`)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed")


@dataclass(frozen=True)
class Precision:
    """What ``trainer.precision`` means on this device.

    ``dtype`` is the autocast dtype (None = full fp32); ``use_scaler`` is True only for fp16,
    whose small exponent range needs loss scaling.
    """

    name: str
    device_type: str
    dtype: torch.dtype | None
    use_scaler: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.use_scaler)


def resolve_precision(name: str | int, device: torch.device) -> Precision:
    """Resolve ``trainer.precision`` for ``device``.

    ``16-mixed`` on CPU falls back to bf16 with a warning: CPUs have no fast fp16 matmul
    (measured ~38x slower than bf16 here). ``bf16-mixed`` on a GPU without native bf16
    (compute capability below 8.0: ``torch.cuda.is_bf16_supported()`` counts emulation) is
    an error naming what to use instead.
    """
    name = str(name)
    if name not in PRECISIONS:
        raise ValueError(f"trainer.precision={name!r}; choose one of {', '.join(PRECISIONS)}")
    kind = device.type
    if name in ("32", "32-true"):
        return Precision(name, kind, None, False)
    if name == "bf16-mixed":
        if kind == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
            if major < 8:  # bf16 is emulated before Ampere: slow, and inductor skips it
                raise ValueError(
                    f"trainer.precision=bf16-mixed but this GPU (compute capability "
                    f"{major}.{minor}) only emulates bf16; use 16-mixed (fp16 with a grad "
                    "scaler) or 32"
                )
        return Precision(name, kind, torch.bfloat16, False)
    if kind == "cuda":
        return Precision(name, kind, torch.float16, True)
    log.warning(
        "trainer.precision=16-mixed on %s: fp16 has no fast CPU kernels, using bf16-mixed "
        "instead (set trainer.precision=bf16-mixed or 32 to silence this)",
        kind,
    )
    return Precision("bf16-mixed", kind, torch.bfloat16, False)


def inference_precision(name: str | None, device: torch.device) -> Precision:
    """What inference samples in: ``name`` as :func:`resolve_precision` reads it, or ``auto``
    (None): fp32 on a CPU (bf16 autocast there is no faster for the DiT and changes samples);
    on a GPU bf16 autocast where it is native (compute capability 8.0 and later), else fp16
    autocast (no grad scaler is needed without gradients)."""
    if name not in (None, "auto"):
        precision = resolve_precision(name, device)
        return Precision(precision.name, precision.device_type, precision.dtype, False)
    if device.type != "cuda":
        return Precision("32", device.type, None, False)
    if torch.cuda.get_device_capability(device)[0] >= 8:
        return Precision("bf16-mixed", "cuda", torch.bfloat16, False)
    return Precision("16-mixed", "cuda", torch.float16, False)


def use_tf32(device: torch.device, enabled: bool = True) -> None:
    """On a GPU, let fp32 matmuls (fp32 training, the fp32 parts of mixed precision) use TF32
    tensor cores (Ampere and later; ignored before) or not. Set through the global
    ``torch.set_float32_matmul_precision``: after the per-backend
    ``torch.backends.cuda.matmul.fp32_precision`` (torch >= 2.9) the global getter, which
    inductor's cache key reads, raises on the mix. CPUs are left alone ("high" would let
    oneDNN use bf16 there)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if enabled else "highest")
