"""What pip installs: every imported package is declared, every dependency is pinned."""

import ast
import sys
import tomllib
from functools import cache
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from lock import closure, stor_requirements  # noqa: E402  (tools/lock.py, what `make lock` runs)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared(*extras: str) -> set[str]:
    """Canonical names of the distributions pyproject.toml asks for (with these extras)."""
    lines = list(PYPROJECT["dependencies"])
    for extra in extras:
        lines += PYPROJECT["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(line).name) for line in lines}


def imported(*folders: str) -> dict[str, set[str]]:
    """``{module: files}`` of every absolute import below ``folders``, except the stdlib's,
    stor's own and the helpers beside the tests, tools and bench."""
    local = {p.stem for folder in ("tests", "tools", "bench") for p in (ROOT / folder).rglob("*.py")}
    local |= {p.name for p in (ROOT / "tests").iterdir() if p.is_dir()}  # the tiers, support
    local.add("stor")
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for name in _absolute_imports(path):
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


@cache
def _absolute_imports(path: Path) -> tuple[str, ...]:
    """The modules ``path`` imports absolutely (parsed once for all the tests here)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return tuple(names)


@cache
def _top_levels() -> dict[str, list[str]]:
    return packages_distributions()


@cache
def owners(module: str) -> frozenset[str]:
    """Canonical names of the installed distributions that provide ``module`` (a module
    not installed here, such as the bench's, is taken to come from its namesake)."""
    top = module.split(".")[0]
    candidates = _top_levels().get(top, [])
    if not candidates:
        return frozenset({canonicalize_name(top)})
    if len(candidates) > 1:  # a namespace package (zope.*): the one holding the module's files
        prefix = "/".join(module.split(".")[:2])
        candidates = [d for d in candidates
                      if any(str(f).startswith(prefix) for f in distribution(d).files or ())]
    return frozenset(canonicalize_name(d) for d in candidates)


@pytest.mark.parametrize("folders, extras", [
    (("stor", "twisted"), ()),
    (("tests", "tools"), ("test",)),
    (("bench",), ("bench", "test")),
])
def test_every_imported_package_is_declared(folders: tuple[str, ...],
                                            extras: tuple[str, ...]) -> None:
    allowed = declared(*extras)
    missing = {}
    for module, files in imported(*folders).items():
        providers = owners(module)
        if not providers & allowed:
            missing[module] = (sorted(providers), sorted(files))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_werkzeug_is_declared() -> None:
    """The case issue 11 found: imported by stor/http/app.py, installed only through klein."""
    assert any(m.split(".")[0] == "werkzeug" for m in imported("stor"))
    assert "werkzeug" in declared()


def pins(name: str) -> dict[str, str]:
    """``{canonical name: version}`` of a constraints file (every line must be ``name==version``)."""
    found: dict[str, str] = {}
    for line in (ROOT / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, sep, version = line.partition("==")
            assert sep and version.strip() and " " not in line, f"{name}: {line!r} is not pinned"
            key = canonicalize_name(package)
            assert key not in found, f"{name}: {package} twice"
            found[key] = version
    return found


def test_every_runtime_dependency_is_pinned() -> None:
    runtime = pins("constraints.txt")
    needed = set(closure(stor_requirements(frozenset()))) - {"stor"}
    assert needed - set(runtime) == set(), "run `make lock`"
    assert "stor" not in runtime


def test_every_test_dependency_is_pinned_once() -> None:
    runtime, test = pins("constraints.txt"), pins("constraints-test.txt")
    assert set(runtime) & set(test) == set()  # one resolution, split in two
    needed = set(closure(stor_requirements(frozenset({"test"})))) - {"stor"}
    assert needed - set(runtime) - set(test) == set(), "run `make lock`"


def test_installs_use_the_pins() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS      := -c constraints.txt" in makefile
    assert "TEST_CONSTRAINTS := -c constraints.txt -c constraints-test.txt" in makefile
    assert "pip install --quiet $(CONSTRAINTS) -e ." in makefile
    assert "pip install --quiet $(TEST_CONSTRAINTS) -e '.[test]'" in makefile
    assert "\nlock:" in makefile and "tools/lock.py" in makefile
