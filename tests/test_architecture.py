"""The rooms of docs/design.md, section 2: every import inside the package, lazy ones included, points
down (face -> scorers, pruning -> taps -> criteria -> engine -> backends -> leaves), and the rooms form
no cycle. Read with ast, so nothing is imported."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rgprune_fast"
LEVEL = {  # room -> level; a room may import rooms of a lower level (and the face's own rooms each other)
    "face": 6,
    "cli": 6,
    "demo": 6,
    "scorers": 5,
    "pruning": 5,
    "taps": 4,
    "criteria": 3,
    "engine": 2,
    "backends": 1,
    "leaves": 0,
}
LEAVES = {"errors", "units", "optional", "_torchvision"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "face"  # rgprune_fast/__init__.py
    if parts[0] == "__main__":
        return "cli"  # python -m rgprune_fast is the command
    return "leaves" if parts[0] in LEAVES else parts[0]


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (``from . import x`` resolves to module x)."""
    name = module_name(path)
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "rgprune_fast"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "rgprune_fast":
                continue
            subs = {f"{target}.{a.name}" for a in node.names}
            found |= {s for s in subs if s in modules} or {target}
    return {m for m in found if m in modules}


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def test_every_module_belongs_to_a_room():
    assert {room(m) for m in graph()} <= set(LEVEL)


def test_imports_point_down():
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            a, b = room(module), room(target)
            if a != b and LEVEL[b] >= LEVEL[a] and not (LEVEL[a] == LEVEL["face"] == LEVEL[b]):
                wrong.append(f"{module} ({a}) imports {target} ({b})")
    assert not wrong, "\n".join(wrong)


def test_rooms_form_no_cycle():
    edges: dict[str, set[str]] = {}
    for module, targets in graph().items():
        for target in targets:
            if room(module) != room(target):
                edges.setdefault(room(module), set()).add(room(target))
    done, active = set(), []

    def visit(r):
        assert r not in active, f"room cycle: {' -> '.join(active[active.index(r) :] + [r])}"
        if r in done:
            return
        active.append(r)
        for nxt in edges.get(r, ()):
            visit(nxt)
        active.pop()
        done.add(r)

    for r in list(edges):
        visit(r)


def test_the_face_is_the_documented_api():
    import rgprune_fast as rg

    assert set(rg.__all__) == {
        "CRITERIA", "METHODS", "BackendUnavailableError", "EmptyDataError", "NonFiniteStatisticsError", "Unit",
        "UnsupportedModuleError", "SkippedUnitsWarning", "__version__", "mc_gradient", "score",
    }  # fmt: skip
    assert tuple(rg.CRITERIA) == rg.METHODS
