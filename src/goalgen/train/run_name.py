"""Run names: a pure function of the config name and the overrides that define a run.

Imported by the entry point (the run directory), the logger (a run's hyper-parameters), the
sweep and the launchers, so that all of them agree on which overrides define a run.
"""

from __future__ import annotations

import hashlib
import re

# Overrides that do not change what is trained: they must not move the run directory.
RUN_NAME_IGNORED = {
    "ckpt_path",
    "resume",
    "output_dir",
    "run_name",
    "num_workers",
    "data.pack_workers",
    "data.cache_dir",
    "trainer.progress_log_every_s",
    "objective",
}


def defining_overrides(overrides: list[str]) -> list[tuple[str, str]]:
    """``(key, value)`` of the overrides that define a run (those its run name is made of): not
    ``hydra.*`` nor the keys in :data:`RUN_NAME_IGNORED`. A sweep point's hyper-parameters."""
    out = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in RUN_NAME_IGNORED or key.startswith("hydra."):
            continue
        out.append((key, value))
    return out


def run_name_for(config_name: str, overrides: list[str]) -> str:
    """A folder-safe run name that is a pure function of the command.

    ``config_name[-experiment][-hash of the other run-changing overrides]``: the same on every
    rank and every requeue, different when a hyper-parameter differs.
    """
    parts, hashed = [config_name], []
    defining = {key for key, _ in defining_overrides(overrides)}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in defining:
            continue
        if key == "experiment":
            parts.append(value)
        else:
            hashed.append(override)
    if hashed:
        parts.append(hashlib.sha1("\n".join(sorted(hashed)).encode()).hexdigest()[:8])
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))
