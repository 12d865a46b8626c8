"""What pip installs: every imported package is declared, every dependency is pinned
with its hashes."""

import ast
import re
import sys
import tomllib
from collections.abc import Iterable
from functools import cache
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared(*extras: str) -> set[str]:
    """Canonical names of the distributions pyproject.toml asks for (with these extras)."""
    lines = list(PYPROJECT["dependencies"])
    for extra in extras:
        lines += PYPROJECT["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(line).name) for line in lines}


def imported(*folders: str) -> dict[str, set[str]]:
    """``{module: files}`` of every absolute import below ``folders``, except the stdlib's,
    stor's own and the helpers beside the tests and bench."""
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
    (("tests",), ("test",)),
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


def closure(requirements: Iterable[tuple[Requirement, frozenset[str]]]) -> set[str]:
    """Canonical names of every installed distribution the requirements pull in
    (markers and extras evaluated as pip did)."""
    found: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(requirements)
    while todo:
        req, parent_extras = todo.pop()
        if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra}) for extra in parent_extras | {""}):
            continue
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        found.add(key[0])
        dist = distribution(req.name)
        todo += [(Requirement(r), frozenset(req.extras)) for r in dist.requires or ()]
    return found


def needed(*extras: str) -> set[str]:
    """What installing stor (with these extras) brings, stor left out."""
    stor = [(Requirement(r), frozenset(extras)) for r in distribution("stor").requires or ()]
    return closure(stor) - {"stor"}


PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+) \\$")
HASH = re.compile(r"^    --hash=sha256:[0-9a-f]{64}( \\)?$")


def pins(name: str) -> dict[str, str]:
    """``{canonical name: version}`` of a pip-compile output; every pin must carry at
    least one sha256 hash (what ``pip install --require-hashes`` demands)."""
    found: dict[str, str] = {}
    hashes: dict[str, int] = {}
    current = ""
    for line in (ROOT / name).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith(" "):
            assert current and HASH.match(line), f"{name}: {line!r} is not a hash of a pin"
            hashes[current] += 1
            continue
        match = PIN.match(line)
        assert match, f"{name}: {line!r} is not pinned with hashes"
        current = canonicalize_name(match["name"])
        assert current not in found, f"{name}: {match['name']} twice"
        found[current], hashes[current] = match["version"], 0
    assert all(hashes.values()), f"{name}: pins without a hash: {hashes}"
    return found


def test_every_runtime_dependency_is_pinned() -> None:
    runtime = pins("requirements.txt")
    assert needed() - set(runtime) == set(), "run `make lock`"
    assert "stor" not in runtime


def test_every_test_dependency_is_pinned_within_the_runtime_pins() -> None:
    runtime, test = pins("requirements.txt"), pins("requirements-test.txt")
    assert {k: test.get(k) for k in runtime} == runtime  # one resolution, runtime pins kept
    assert needed("test") - set(test) == set(), "run `make lock`"
    assert "stor" not in test


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-test.txt"])
def test_this_venv_runs_the_pinned_versions(name: str) -> None:
    """What the tests ran on is what a host gets (``make install-test`` installs the pins)."""
    installed = {k: distribution(k).version for k in pins(name)}
    assert installed == pins(name)


def test_installs_use_the_pins() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "PIP_PINNED := $(BIN)/pip install --quiet --require-hashes --no-deps" in makefile
    assert "$(PIP_PINNED) -r requirements.txt" in makefile
    assert "$(PIP_PINNED) -r requirements-test.txt" in makefile
    assert "pip install --quiet --no-deps -e ." in makefile  # stor itself, nothing else
    assert "\nlock:" in makefile and "pip-compile $(LOCK_ARGS)" in makefile
    assert "--generate-hashes" in makefile
