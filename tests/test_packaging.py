"""pyproject.toml's package list matches the tree: every folder under a package (data folders
too: Python imports those as namespace packages) is listed, so setuptools neither warns that a
package "would be ignored" nor leaves files out, and package-data ships every data file."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
PACKAGE_DIRS = {name: ROOT / folder for name, folder in SETUPTOOLS["package-dir"].items()}


def _folders() -> dict[str, Path]:
    """Every folder of the tree that holds a file, by dotted name (caches left out)."""
    found = {}
    for name, top in PACKAGE_DIRS.items():
        for folder in [top, *sorted(p for p in top.rglob("*") if p.is_dir())]:
            parts = folder.relative_to(top).parts
            if "__pycache__" in parts or any(p.startswith(".") for p in parts):
                continue
            if any(f.is_file() for f in folder.iterdir()):
                found[".".join((name, *parts))] = folder
    return found


def test_every_folder_of_the_tree_is_a_listed_package() -> None:
    assert sorted(_folders()) == sorted(SETUPTOOLS["packages"])


def test_package_data_ships_every_data_file() -> None:
    patterns = SETUPTOOLS.get("package-data", {})
    missing = [
        str(file.relative_to(ROOT))
        for package, folder in _folders().items()
        for file in folder.iterdir()
        if file.is_file()
        and file.suffix not in {".py", ".pyc"}
        and not any(fnmatch(file.name, p) for p in patterns.get(package, []))
    ]
    assert missing == []
