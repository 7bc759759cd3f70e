"""The import graph: dependencies point one way, and no package reaches into another's privates."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
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
    "steering_client": {"grpc", "google", "steering_proto"},
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
