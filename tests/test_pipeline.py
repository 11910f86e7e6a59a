"""dvc.yaml against the code: every stage depends on each project module its script imports.

A module missing from a stage's deps means editing it does not re-run the stage, so `dvc repro`
would call stale outputs up to date; a module listed but not imported re-runs it for nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module_file(module: str) -> Path | None:
    """The file of a ``pneumo.*`` module or package, None if there is none."""
    base = SRC / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _with_packages(module: str) -> set[str]:
    """``module`` and the packages below ``pneumo`` that importing it runs first."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts) + 1)}


def _imported_modules(path: Path) -> set[str]:
    """``pneumo.*`` modules a file imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import name` imports a module too when package/name is one
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [node.module, *(m for m in subs if _module_file(m))]
        else:
            continue
        for name in names:
            if name.startswith("pneumo."):
                found |= _with_packages(name)
    return found


def project_files(script: Path) -> set[str]:
    """The script and every project module it reaches through imports, as repo-relative paths."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            target = _module_file(module)
            assert target, f"{path.relative_to(ROOT)} imports {module}: no such module in {SRC}"
            todo.append(target)
    return {p.relative_to(ROOT).as_posix() for p in seen}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_the_modules_its_script_imports(name: str) -> None:
    stage = STAGES[name].get("do", STAGES[name])  # a foreach stage's body is under do:
    if "matrix" in stage:  # the one script with an argument: the matrix's fold number
        script, arg = stage["cmd"].split()[1:]
        assert arg == "${item.fold}", stage["cmd"]
    else:
        script = stage["cmd"].split()[-1]
        assert stage["cmd"] == f"python {script}", stage["cmd"]
    code_deps = {d for d in stage["deps"] if d.startswith("src/")}
    needed = project_files(ROOT / script)
    assert not needed - code_deps, f"{name}: add to deps: {sorted(needed - code_deps)}"
    assert not code_deps - needed, f"{name}: imported by nothing: {sorted(code_deps - needed)}"


def test_the_import_walk_sees_lazy_and_package_imports(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text(
        "from pneumo import labels\n"
        "def f():\n"
        "    from pneumo.atomic import write_json\n"
        "    import pneumo.params\n"
        "    from pneumo.synthetic import cohort, generate\n"
        "    from pneumo.synthetic.render import render\n"
    )
    found = _imported_modules(script)
    assert found == {
        "pneumo.labels",
        "pneumo.atomic",
        "pneumo.params",
        "pneumo.synthetic",
        "pneumo.synthetic.cohort",
        "pneumo.synthetic.render",
    }
