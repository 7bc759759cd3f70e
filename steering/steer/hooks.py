"""Steering hooks on a Gemma model's decoder layers.

`install_steering` registers one forward hook per layer that carries an SAE, once. Each forward
reads the tables of the current step, set with `SteeringHooks.step(...)` and cleared when that
block ends; with no step set, or no edits for a layer, the hook leaves the layer's output as is.
Hooks return new tensors and never write into the model's outputs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from steering.errors import ModelError
from steering.models.gemma import decoder_layers
from steering.sae.jumprelu import JumpReLUSAE
from steering.steer.readings import ReadTable, read
from steering.steer.rules import RuleTable, fired
from steering.steer.slot_tables import (
    SlotStep,
    fired_slots,
    read_slots,
    reconstruct_slots,
    steer_slots,
)
from steering.steer.tables import EditTable, apply_full, edit_counts, steer_rows, table_activations

SITES = ("resid_post",)  # the hook sites served; attn_out / mlp_out use the same math later


@dataclass(frozen=True, eq=False)
class SaeAttachment:
    """An SAE served under `name`, reading the output of decoder layer `layer`."""

    name: str
    sae: JumpReLUSAE
    layer: int
    site: str = "resid_post"
    # Research mode: replace the residual with the SAE's (edited) reconstruction x̂', dropping
    # the error term, at every steerable position of every row in a step. (Rule edits are
    # applied there as soon as the request starts: research mode has no rules.)
    reconstruct: bool = False
    sha256: str = ""  # of its parameter file, when loaded from one (what presets pin)


@dataclass(frozen=True, eq=False)
class StepTables:
    """What the hooks apply during one forward: edit tables by SAE name, and where; what they
    read. The hooks leave `counts.<SAE>` (edit receipts) and `read.<SAE>` (a ReadOut) in `out`."""

    tables: Mapping[str, EditTable] = field(default_factory=dict)
    steerable: torch.Tensor | None = None  # (B, T) bool; None: every position
    reads: Mapping[str, ReadTable] = field(default_factory=dict)
    out: dict[str, object] = field(default_factory=dict)
    rules: Mapping[str, RuleTable] = field(default_factory=dict)
    latch: torch.Tensor | None = None  # (rules + 1,) bool: which rules fired before this forward
    # A decode over the slots: the per-slot tables instead of `tables`, `reads` and `rules`.
    slots: SlotStep | None = None


class SteeringHooks:
    """Steering installed on a model; `remove()` (or leaving a `with` block) restores it exactly."""

    def __init__(self, model: nn.Module, attachments: Sequence[SaeAttachment]) -> None:
        self.attachments = _checked(model, attachments)
        self._current: StepTables | None = None
        self.seconds = 0.0  # host time spent steering, all calls together
        self._handles: list[RemovableHandle] = []
        layers = decoder_layers(model)
        for layer in sorted({a.layer for a in self.attachments}):
            on_layer = [a for a in self.attachments if a.layer == layer]
            self._handles.append(layers[layer].register_forward_hook(self._hook_for(on_layer)))

    @property
    def saes(self) -> dict[str, JumpReLUSAE]:
        return {a.name: a.sae for a in self.attachments}

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    @contextmanager
    def step(self, tables: StepTables) -> Iterator[None]:
        """Apply `tables` to the forwards run inside this block."""
        self._current = tables
        try:
            yield
        finally:
            self._current = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> SteeringHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _hook_for(self, attachments: list[SaeAttachment]) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            tables = self._current
            if tables is None:
                return None
            hidden = output[0] if isinstance(output, tuple) else output  # (B, T, d_model)
            start = time.perf_counter()
            steered = steer(hidden, attachments, tables)
            self.seconds += time.perf_counter() - start
            if steered is hidden:
                return None
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook


def steer(
    hidden: torch.Tensor, attachments: Sequence[SaeAttachment], tables: StepTables
) -> torch.Tensor:
    """One layer's steering; SAEs sharing a layer apply in order, each reading (for watch and
    Inspect) what the ones before it left. Returns `hidden` if unchanged."""
    if tables.slots is not None:
        return steer_by_slot(hidden, attachments, tables.slots, tables)
    for attachment in attachments:
        name, steerable = attachment.name, tables.steerable
        reads = tables.reads.get(name)
        if reads is not None:
            seen = tables.out[f"read.{name}"] = read(hidden, attachment.sae, reads, steerable)
            rules = tables.rules.get(name)
            if rules is not None and seen.named is not None and tables.latch is not None:
                tables.out[f"fired.{name}"] = fired(seen.named, rules, steerable, tables.latch)
        table = tables.tables.get(name)
        if attachment.reconstruct:
            if table is not None:
                f = table_activations(hidden, table)
                tables.out[f"counts.{name}"] = edit_counts(f, table, steerable)
            hidden = apply_full(hidden, attachment.sae, table, steerable, keep_error=False)
        elif table is not None:
            hidden, tables.out[f"counts.{name}"] = steer_rows(
                hidden, table, steerable, tables.latch
            )
    return hidden


def steer_by_slot(
    hidden: torch.Tensor, attachments: Sequence[SaeAttachment], step: SlotStep, tables: StepTables
) -> torch.Tensor:
    """`steer` for a forward over slots 0..n-1 (row b is slot b), from the per-slot tables."""
    steerable = tables.steerable
    for attachment in attachments:
        name, sae = attachment.name, attachment.sae
        table = step.tables.tables[name]
        k, kr, r = step.widths.get(name, (0, 0, 0))
        if kr:
            named = read_slots(hidden, sae, table, step.n, kr, steerable)
            tables.out[f"read.{name}.named"] = named
            if r:
                tables.out[f"fired.{name}"] = fired_slots(named, table, step, r, steerable)
        if attachment.reconstruct:
            hidden = reconstruct_slots(hidden, sae, table, step, k, steerable)
        elif k:
            hidden = steer_slots(hidden, sae, table, step, k, steerable)
    return hidden


def install_steering(model: nn.Module, attachments: Sequence[SaeAttachment]) -> SteeringHooks:
    """Install steering hooks for `attachments` on `model`; see `SteeringHooks`."""
    return SteeringHooks(model, attachments)


def _checked(model: nn.Module, attachments: Sequence[SaeAttachment]) -> tuple[SaeAttachment, ...]:
    n_layers = len(decoder_layers(model))
    d_model = _hidden_size(model)
    names: set[str] = set()
    for a in attachments:
        if a.name in names:
            raise ModelError(f"SAE name {a.name!r} is used twice")
        names.add(a.name)
        if a.site not in SITES:
            raise ModelError(
                f"SAE {a.name!r}: site {a.site!r} is not served (served: {', '.join(SITES)})"
            )
        if not 0 <= a.layer < n_layers:
            raise ModelError(
                f"SAE {a.name!r}: layer {a.layer} is out of range (the model has {n_layers} layers)"
            )
        if d_model is not None and a.sae.d_model != d_model:
            raise ModelError(
                f"SAE {a.name!r}: d_model {a.sae.d_model} does not match the model's {d_model}"
            )
    return tuple(attachments)


def _hidden_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "hidden_size", None)
    return int(size) if size is not None else None
