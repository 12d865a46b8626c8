"""The folder tree is the architecture: imports point down the layers only, and no
module imports itself back through others (docs/architecture.rst)."""

import ast
from collections.abc import Iterator
from pathlib import Path

STOR = Path(__file__).resolve().parent.parent / "stor"

RANK = {"core": 0, "config": 1, "disk": 2, "cache": 2, "amqp": 2, "s3": 3, "observe": 3,
        "store": 4, "http": 5, "client": 5, "process": 6, "cli": 7}
"""A package may import only packages of a lower rank (and ``stor`` itself for the
version).  core: the rules (layout, SHA, ranges, placement, errors); config: typed
sections; disk, cache, amqp, s3, observe: one folder per tier; store: the policy and
its interface; http: the routes (which see the store through its interface only:
:data:`HTTP_MAY_IMPORT`); process: assembly; cli: commands."""

CLIENT_MAY_IMPORT = {"core"}
"""The client talks to a server over HTTP only: it shares the SHA rules, nothing else."""

HTTP_MAY_IMPORT = ("stor.core", "stor.store.interface")
"""The routes enter the store by one door: its interface (``Reading``, the upload
handle, the ``StoreApi`` protocol), never the store's policy or a tier below it."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(STOR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every ``stor`` module ``path`` imports, at any depth of its code."""
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" \
        else _module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "stor")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.split(".")[0] == "stor":
                # "from stor.config import values" imports the module stor.config.values.
                yield from (f"{module}.{a.name}" for a in node.names)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in STOR.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            # "stor.disk.locks.ShaLocks" is a name in the module stor.disk.locks.
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANK) else None


def test_every_package_has_a_rank() -> None:
    packages = {p.name for p in STOR.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(RANK)


def test_imports_point_down_only() -> None:
    wrong = []
    for module, targets in _graph().items():
        source = _package(module)
        for target in targets:
            dest = _package(target)
            if source is None or dest is None or dest == source:
                continue
            allowed = (dest in CLIENT_MAY_IMPORT if source == "client"
                       else RANK[dest] < RANK[source])
            if not allowed:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def _outside_http(graph: dict[str, set[str]]) -> list[str]:
    """What HTTP modules import besides HTTP, ``stor`` itself and :data:`HTTP_MAY_IMPORT`."""
    wrong = []
    for module, targets in graph.items():
        if _package(module) != "http":
            continue
        for target in sorted(targets):
            if target == "stor" or _package(target) == "http" or any(
                    target == allowed or target.startswith(allowed + ".")
                    for allowed in HTTP_MAY_IMPORT):
                continue
            wrong.append(f"{module} imports {target}")
    return wrong


def test_http_imports_only_the_store_interface_and_core() -> None:
    assert _outside_http(_graph()) == []


def test_the_http_rule_fails_on_a_door_past_the_interface() -> None:
    """The rule above is not vacuous: the imports the routes had before the one door fail it."""
    graph = {"stor.http.app": {"stor.store.store", "stor.disk.spool", "stor.core.sha"},
             "stor.http.site": {"stor.observe.access", "stor.http.request"},
             "stor.http.fastlane": {"stor.store.interface", "stor.http.app"}}
    assert _outside_http(graph) == ["stor.http.app imports stor.disk.spool",
                                    "stor.http.app imports stor.store.store",
                                    "stor.http.site imports stor.observe.access"]


def test_no_module_imports_itself_back() -> None:
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_checks_see_the_store_under_the_http_layer() -> None:
    """The graph is not empty by mistake: the routes do import the store's interface."""
    assert "stor.store.interface" in _graph()["stor.http.app"]
