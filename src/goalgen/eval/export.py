"""``goalgen-export``: a run's checkpoint as a small weights file for inference.

>>> goalgen-export outputs/RUN planner_fm.pt            # best checkpoint, EMA weights in bf16
>>> goalgen-export outputs/RUN planner_fm.pt --method euler --steps 8   # + a planner's sampler

The file (:func:`goalgen.checkpoint.export_weights`) holds the EMA network weights cast to
``--dtype`` and the run's config; ``GoalPredictor.from_checkpoint``, ``goalgen-propose``,
``goalgen-eval`` and ``goalgen-predict`` take it in place of a run directory, and load it in
the network's own dtype. bf16 halves an fp32 file (the weights keep 8 bits of mantissa).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from goalgen import checkpoint as ckpt
from goalgen.cli import USER_ERRORS, OneLineParser, one_line

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="goalgen-export", description="Write a run's EMA weights as a small inference file."
    )
    parser.add_argument("run_dir", help="training run directory (or a .ckpt file)")
    parser.add_argument("out", type=Path, help="output weights file (.pt)")
    parser.add_argument("--checkpoint", default="best", help="best (default), last or a path")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="bf16 (default)")
    parser.add_argument(
        "--method", help="default sampler of the file (flow: euler, midpoint, ...; ddim/ddpm)"
    )
    parser.add_argument("--steps", type=int, help="default sampling steps of the file")
    parser.add_argument(
        "--cpu-precision",
        choices=("32", "bf16-mixed"),
        help="what the file samples in on a CPU by default (else fp32)",
    )
    args = parser.parse_args(argv)
    try:
        source = ckpt.select_checkpoint(args.run_dir, args.checkpoint)
        state = ckpt.load_checkpoint(source)
        ckpt.export_weights(
            state,
            args.out,
            DTYPES[args.dtype],
            str(source),
            args.method,
            args.steps,
            args.cpu_precision,
        )
    except USER_ERRORS as error:
        print(f"goalgen-export: error: {one_line(error)}", file=sys.stderr)
        return 1
    size = args.out.stat().st_size / 2**20
    print(f"{source} (step {state['step']}) -> {args.out} ({size:.1f} MiB, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
