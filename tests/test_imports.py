"""The import graph: dependencies point one way, no module imports itself back (through any
chain, type-only imports included), and no package reaches into another's privates.

`python -m pytest tests/test_imports.py` checks it; the rules below are the architecture.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {  # top-level package -> its folder
    "steering": ROOT / "steering",
    "steering_server": ROOT / "server" / "steering_server",
    "steering_client": ROOT / "clients" / "python" / "steering_client",
    "steering_proto": ROOT / "clients" / "python" / "steering_proto",
    "bench": ROOT / "bench",
}
# What each package may import beyond the standard library and itself.
ALLOWED = {
    # gguf: the optional GGUF header reader (the `gguf` extra), imported only when asked for.
    "steering": {"torch", "transformers", "tokenizers", "safetensors", "numpy", "gguf"},
    "steering_client": {"grpc", "google", "steering_proto", "typing_extensions"},
    "steering_proto": {"grpc", "google", "steering_proto"},
}


def _imports(file: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every import in a file; `from a import b` gives `a.b` too."""
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def _files(package: str) -> list[Path]:
    return sorted(PACKAGES[package].rglob("*.py"))


def test_the_package_map_covers_the_tree() -> None:
    assert all(_files(package) for package in PACKAGES)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_they_may(package: str) -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__", "_typeshed"}  # _typeshed: for mypy
    allowed = ALLOWED[package] | {package} | stdlib
    found = [
        f"{file.relative_to(ROOT)}:{line} imports {module}"
        for file in _files(package)
        for line, module in _imports(file)
        if module.split(".")[0] not in allowed
    ]
    assert not found, "\n".join(found)


def test_the_core_imports_no_serving_stack() -> None:
    banned = ("grpc", "google.protobuf", "prometheus_client", "pydantic_settings", "steering_")
    found = [
        f"{file.relative_to(ROOT)}:{line} imports {module}"
        for file in _files("steering")
        for line, module in _imports(file)
        if module.startswith(banned)
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_package_imports_another_packages_private_modules(package: str) -> None:
    found = []
    for file in _files(package):
        for line, module in _imports(file):
            top, *rest = module.split(".")
            private = [part for part in rest if part.startswith("_") and not part.startswith("__")]
            if top != package and top in PACKAGES and private:
                found.append(f"{file.relative_to(ROOT)}:{line} imports {module}")
    assert not found, "\n".join(found)


# The core's layers: what each part of `steering` may import from the rest of `steering`.
# Front end -> engine -> steering math -> SAE and model; discovery beside the engine; training
# and the demo beside serving. The top-level modules are the domain every layer may use.
DOMAIN = {"steering.errors", "steering.edits", "steering.requests"}
CORE_LAYERS = {
    "steering.errors": set(),
    "steering.edits": {"steering.errors"},
    "steering.requests": {"steering.errors", "steering.edits"},
    "steering.sae": {"steering.errors"},
    "steering.models": {"steering.errors"},
    "steering.steer": DOMAIN | {"steering.sae", "steering.models"},
    "steering.engine": DOMAIN | {"steering.sae", "steering.models", "steering.steer"},
    "steering.discovery": DOMAIN,
    "steering.frontend": DOMAIN
    | {"steering.models", "steering.steer", "steering.engine", "steering.discovery"},
    "steering.demo": DOMAIN | {"steering.sae", "steering.models"},
    "steering.train": DOMAIN
    | {"steering.sae", "steering.models", "steering.discovery", "steering.demo"},
}
# Each transport's libraries belong to its own edge of the server, and to no other module.
TRANSPORTS = {
    "steering_server.grpc_api": {"grpc", "grpc_health", "grpc_reflection", "google"},
    "steering_server.http_api": {"fastapi", "starlette", "uvicorn", "sse_starlette"},
}


def _module_of(file: Path) -> str:
    """The dotted module a file defines (a package's `__init__.py` defines the package)."""
    for package, folder in PACKAGES.items():
        if folder in file.parents:
            parts = (package, *file.relative_to(folder).with_suffix("").parts)
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(file)


@cache
def _modules() -> dict[str, Path]:
    return {_module_of(f): f for package in PACKAGES for f in _files(package)}


def _part(module: str) -> str:
    """The layer of a `steering` module: its subpackage, or the top-level module itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_the_core_layers_cover_the_tree() -> None:
    parts = {_part(m) for m in _modules() if m.startswith("steering.")}
    assert parts == set(CORE_LAYERS), parts ^ set(CORE_LAYERS)


def test_the_core_layers_point_one_way() -> None:
    found = []
    for module, file in _modules().items():
        if not module.startswith("steering."):
            continue  # `steering` itself is the public API: it may gather from every layer
        here = _part(module)
        for line, imported in _imports(file):
            there = _resolve(imported)
            if there is None or not there.startswith("steering."):
                continue
            if _part(there) not in CORE_LAYERS[here] | {here}:
                found.append(f"{file.relative_to(ROOT)}:{line} ({here}) imports {there}")
    assert not found, "\n".join(sorted(set(found)))


def test_each_transport_stays_in_its_edge() -> None:
    found = []
    for module, file in _modules().items():
        if not module.startswith("steering_server"):
            continue
        for edge, libraries in TRANSPORTS.items():
            inside = module == edge or module.startswith(edge + ".")
            for line, imported in _imports(file):
                if imported.split(".")[0] in libraries and not inside:
                    found.append(f"{file.relative_to(ROOT)}:{line} imports {imported}")
    assert not found, "\n".join(sorted(set(found)))


def _resolve(imported: str) -> str | None:
    """The project module an import names (`a.b.C` -> `a.b`), or None outside the project."""
    modules = _modules()
    while imported and imported not in modules:
        imported = imported.rpartition(".")[0]
    return imported or None


def _imported_modules(file: Path) -> Iterator[str]:
    """What a file's imports load: `from a import b` loads `a.b` where that is a module, else
    `a` (a name defined in it)."""
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                yield name if name in _modules() else node.module


def test_no_import_circle() -> None:
    """No module reaches itself through imports, type-only and function-local ones included.
    A package's `__init__` counts as a module that imports what it re-exports."""
    graph = {
        module: {
            target
            for imported in _imported_modules(file)
            if (target := _resolve(imported)) is not None and target != module
        }
        for module, file in _modules().items()
    }
    done: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            circles.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not circles, "\n".join(" -> ".join(c) for c in circles)
