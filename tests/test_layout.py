"""The package layout: imports point one way, and inference stands without the training stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "goalgen"
# lower layers first; a module may import its own layer and the layers before it, never after
LAYERS = [
    {"io", "cli", "config", "precision"},
    {"data"},
    {"model"},
    {"checkpoint"},
    {"infer", "compat"},
    {"eval"},
    {"train"},
    {"launch", "bench", "sweep", "run_episodes"},
]


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.startswith("goalgen.") else module
    return next(i for i, names in enumerate(LAYERS) if top in names)


def goalgen_imports(path: Path) -> set[str]:
    """Every ``goalgen.*`` module imported anywhere in ``path`` (top level or in a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "goalgen":
            found.update(f"goalgen.{a.name}" for a in node.names if a.name != "__version__")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("goalgen."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("goalgen."))
    return found


def test_imports_point_down_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        own = layer_of(rel.parts[0].removesuffix(".py"))
        for module in goalgen_imports(path):
            if layer_of(module) > own:
                upward.append(f"{rel} imports {module}")
    assert not upward, upward


def test_the_predictor_imports_no_training_code():
    code = (
        "import sys\n"
        "from goalgen.infer import GoalPredictor\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('goalgen.train', 'goalgen.bench', "
        "'goalgen.launch', 'goalgen.eval', 'submitit', 'torchx')))\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_package_module_fits_a_layer():
    for path in PACKAGE.iterdir():
        if path.name.startswith(("_", ".")) or path.name == "configs":
            continue
        if path.is_dir() and not any(path.rglob("*.py")):
            continue  # package data, not code: weights/
        layer_of(path.name.removesuffix(".py"))  # StopIteration: a new top-level name
