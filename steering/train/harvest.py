"""Token windows of the corpus and the residual activations they give at one layer.

`windows` cuts each document into windows of `context` tokens that start with BOS, takes a
budget of tokens per source for training and for the held-out set, and keeps its order fixed
by a seed. `layer_outputs` runs the model only as far as the layer (the layers above and the
262k-token head never run) and returns the layer's output at every position but BOS, whose
activation is an outlier no SAE is trained on.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from steering.train.corpus import Document


class _Reached(Exception):
    """Raised by the capture hook: the layers above the SAE's never run."""


def windows(
    docs: Sequence[Document],
    tokenizer: Any,
    *,
    context: int,
    budget: dict[str, int],
    held_out: bool,
    seed: int,
) -> torch.Tensor:
    """(N, context) long: BOS + `context - 1` tokens of one document per row, drawn at random
    (fixed by `seed`) from each source's documents of the split until its budget is spent."""
    rng = random.Random(seed)
    rows: list[list[int]] = []
    for source, tokens in budget.items():
        chunks = [
            ids[i : i + context - 1]
            for doc in docs
            if doc.source == source and doc.held_out == held_out
            for ids in [tokenizer(doc.text, add_special_tokens=False)["input_ids"]]
            for i in range(0, len(ids) - context + 2, context - 1)
        ]
        rng.shuffle(chunks)
        rows += [[tokenizer.bos_token_id, *c] for c in chunks[: max(1, tokens // (context - 1))]]
    rng.shuffle(rows)
    return torch.tensor(rows, dtype=torch.long)


def layer_outputs(
    model: Any, layer: int, ids: torch.Tensor, *, batch: int = 16
) -> Iterator[torch.Tensor]:
    """Per batch of windows, (batch · (T - 1), d_model) float32: the output of decoder layer
    `layer` at every position after BOS."""
    captured: list[torch.Tensor] = []

    def capture(module: Any, args: Any, output: Any) -> None:
        captured.append(output if torch.is_tensor(output) else output[0])
        raise _Reached

    handle = model.get_decoder().layers[layer].register_forward_hook(capture)
    try:
        for start in range(0, len(ids), batch):
            captured.clear()
            with torch.no_grad():
                with contextlib.suppress(_Reached):
                    model(input_ids=ids[start : start + batch], use_cache=False)
            yield captured[0][:, 1:].reshape(-1, captured[0].shape[-1]).float()
    finally:
        handle.remove()


def progress_bar(label: str, done: int, total: int, start: float) -> None:
    """A plain-text progress bar on stderr, redrawn in place; a newline once done."""
    rate = done / max(time.monotonic() - start, 1e-9)
    eta = (total - done) / max(rate, 1e-9)
    bar = "#" * int(30 * done / max(total, 1))
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r{label:<12} [{bar:<30}] {done}/{total}  eta {eta:5.0f} s{end}")
