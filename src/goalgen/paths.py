"""Where the packaged Hydra configs live (the repo's configs/ or the installed copy)."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """``configs/`` of a source checkout, else the copy shipped inside the wheel."""
    package = Path(__file__).resolve().parent
    checkout = package.parents[1] / "configs"
    return checkout if checkout.is_dir() else package / "configs"
