"""Shared pieces of the benchmarks: model presets, interleaved repetitions, Markdown tables.

Every figure is the median of interleaved repetitions (A, B, A, B, ...), so drifts of a shared
machine hit every variant alike; min-max is shown beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steering import load_model
from steering.demo.toy import build_model

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=512,
    ),
    "medium": dict(
        hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=4, head_dim=64, vocab_size=32000,
    ),
    # The real Gemma 2 2B architecture with random weights (26 layers; fewer with --layers).
    "gemma-2-2b": dict(
        hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, vocab_size=256000,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Setup:
    preset: str
    layers: int | None
    device: torch.device
    dtype: torch.dtype
    reps: int
    d_sae: int

    def describe(self, model: Any) -> str:
        c = model.config.get_text_config()
        return (
            f"model {self.preset}: d_model {c.hidden_size}, {c.num_hidden_layers} layers, vocab "
            f"{c.vocab_size}; {self.device.type} {str(self.dtype).removeprefix('torch.')}, "
            f"{torch.get_num_threads()} torch thread(s); SAE width {self.d_sae}; "
            f"median of {self.reps} interleaved repetitions"
        )


def build(setup: Setup) -> Any:
    """The preset's random-weight model, or a local model folder, on the setup's device."""
    if Path(setup.preset).is_dir():
        return load_model(setup.preset, device=setup.device, dtype=setup.dtype).model
    config = dict(PRESETS[setup.preset])
    if setup.layers:
        config["num_hidden_layers"] = setup.layers
    vocab = config.pop("vocab_size")
    model = build_model("gemma2", vocab, seed=0, max_position_embeddings=8192, **config)
    return model.to(device=setup.device, dtype=setup.dtype)


@dataclass
class Table:
    """One comparison: rows of variants, columns of metrics, each a list of samples."""

    title: str
    unit: str
    baseline: str
    rows: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, variant: str, metrics: Mapping[str, float]) -> None:
        for metric, value in metrics.items():
            self.rows.setdefault(variant, {}).setdefault(metric, []).append(value)

    def median(self, variant: str, metric: str) -> float:
        return statistics.median(self.rows[variant][metric])

    def markdown(self) -> str:
        """Medians [min-max]; the last column compares the first metric with the baseline's."""
        metrics = list(dict.fromkeys(m for samples in self.rows.values() for m in samples))
        head = " | ".join(f"{m} {self.unit}".strip() for m in metrics)
        lines = [
            f"### {self.title}",
            "",
            f"| variant | {head} | {metrics[0]} vs {self.baseline} |",
            "|---" * (len(metrics) + 2) + "|",
        ]
        base = self.median(self.baseline, metrics[0])
        for variant, samples in self.rows.items():
            cells = [_cell(samples.get(m)) for m in metrics]
            ratio = self.median(variant, metrics[0]) / base
            lines.append(f"| {variant} | {' | '.join(cells)} | {ratio:.3f} |")
        lines += [f"\n{note}" for note in self.notes]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "unit": self.unit,
            "baseline": self.baseline,
            "rows": {
                variant: {m: _summary(s) for m, s in samples.items()}
                for variant, samples in self.rows.items()
            },
            "notes": self.notes,
        }  # fmt: skip


def _cell(samples: list[float] | None) -> str:
    if not samples:
        return "-"
    return f"{statistics.median(samples):.4g} [{min(samples):.3g}-{max(samples):.3g}]"


def _summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": samples,
    }


def interleave(
    table: Table, runs: Mapping[str, Callable[[], Mapping[str, float]]], reps: int
) -> Table:
    """Run every variant once to warm up, then `reps` rounds of all variants in turn."""
    for run in runs.values():
        run()
    for _ in range(reps):
        for variant, run in runs.items():
            table.add(variant, run())
    return table
