"""The packages import each other in one direction only (no cycles, not even through imports inside functions).

Layers, bottom up; a package may import only packages of a lower rank:

    errors, resources < geometry < io < prompts < models < processors < data, inference, hub
    < evaluation, registry < zoo (the top-level API) < training, deploy, app (the web app) < cli

``models`` are pure networks (nothing from processors, data, training or hub); geometry and prompts import no model.
"""

from __future__ import annotations

import ast
from pathlib import Path

ZOO = Path(__file__).resolve().parents[1] / "zoo"
RANK = {
    "errors": 0, "resources": 0, "geometry": 1, "io": 2, "prompts": 3, "models": 4, "processors": 5,
    "data": 6, "inference": 6, "hub": 6, "evaluation": 7, "registry": 7, "zoo": 8, "training": 9, "deploy": 9,
    "app": 9, "cli": 10,
}


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "zoo":
        return None
    return parts[1] if len(parts) > 1 else "zoo"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _own_package(path: Path) -> str:
    relative = path.relative_to(ZOO)
    return "zoo" if relative == Path("__init__.py") else relative.parts[0].removesuffix(".py")


def test_every_package_has_a_rank() -> None:
    packages = {_own_package(path) for path in ZOO.rglob("*.py")}
    assert packages <= set(RANK), f"give these packages a layer in RANK: {sorted(packages - set(RANK))}"


def test_imports_only_go_down_the_layers() -> None:
    upward = []
    for path in sorted(ZOO.rglob("*.py")):
        own = _own_package(path)
        for module in _imports(path):
            target = _package(module)
            if target is None or target == own:
                continue
            if RANK[target] >= RANK[own]:
                upward.append(f"{path.relative_to(ZOO.parent)} ({own}) imports {module} ({target})")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)
