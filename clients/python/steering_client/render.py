"""How the CLI shows results: the comparison layouts, watched values (and what they mean for a
feature the request edits), Inspect's per-token table, search matches, Contrast, feature cards,
and the model description. Pure functions of the client's dataclasses
to text; the CLI (`cli.py`) only parses arguments, calls and prints.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from itertools import zip_longest

from steering_client.discovery import (
    Contrast,
    FeatureCard,
    FeatureContrast,
    FeatureMatch,
    InspectedToken,
    TokenWeight,
)
from steering_client.edits import Edit, FeatureRef
from steering_client.responses import Chunk, Comparison, Completion, ModelDescription

SIDE_BY_SIDE_MIN_COLUMNS = 100
COMPARED = ("unsteered", "steered")
_GUTTER = " | "


def format_comparison(comparison: Comparison, columns: int) -> str:
    """Both completions, wrapped to fit `columns`: side by side under "unsteered | steered"
    headings when `columns` >= 100, else as interleaved lines labelled "unsteered:" and
    "  steered:" (line k of one, then line k of the other)."""
    texts = (comparison.unsteered.text, comparison.steered.text)
    if columns >= SIDE_BY_SIDE_MIN_COLUMNS:
        width = (columns - len(_GUTTER)) // 2
        left, right = (_wrapped(text, width) for text in texts)
        rows = [
            (COMPARED[0], COMPARED[1]),
            ("-" * width, "-" * width),
            *zip_longest(left, right, fillvalue=""),
        ]
        return "\n".join(f"{a:<{width}}{_GUTTER}{b}".rstrip() for a, b in rows)
    label_width = max(len(name) for name in COMPARED)
    width = max(columns - label_width - 2, 20)
    lines = []
    for pair in zip_longest(*(_wrapped(text, width) for text in texts)):
        for name, line in zip(COMPARED, pair, strict=True):
            if line is not None:
                lines.append(f"{name:>{label_width}}: {line}".rstrip())
    return "\n".join(lines)


def _wrapped(text: str, width: int) -> list[str]:
    """`text` wrapped to `width` columns, its own line breaks kept (a blank line stays one)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines.extend(textwrap.wrap(paragraph, width, replace_whitespace=False) or [""])
    return lines


def format_watched_completion(watch: Sequence[FeatureRef], completion: Completion) -> str:
    """One row per generated token of a whole completion: its index, id and the watched
    features' activations (a completion keeps no per-chunk text, so there is no text column)."""
    header = ["#", "id", *(str(ref) for ref in watch)]
    rows = [
        [str(i), "" if token_id is None else str(token_id), *(_number(v) for v in values or ())]
        for i, (token_id, values) in enumerate(
            zip_longest(completion.token_ids, completion.watched, fillvalue=None)
        )
    ]
    return _table(header, rows, left=set())


def format_watched(watch: Sequence[FeatureRef], chunks: Sequence[Chunk]) -> str:
    """One row per generated token: its index, id, text and the watched features' activations.

    A chunk's text is shown on the row of its first token (the server decodes incrementally, so
    a chunk of several tokens has one text); its other rows show none.
    """
    header = ["#", "id", "text", *(str(ref) for ref in watch)]
    rows: list[list[str]] = []
    for chunk in chunks:
        for i, (token_id, values) in enumerate(
            zip_longest(chunk.token_ids, chunk.watched, fillvalue=None)
        ):
            text = _escaped(chunk.text) if i == 0 else ""
            shown = [_number(v) for v in values or ()]
            rows.append([str(len(rows)), "" if token_id is None else str(token_id), text, *shown])
    return _table(header, rows, left={2})


def format_watch_note(watch: Sequence[FeatureRef], edits: Iterable[Edit]) -> str | None:
    """A note for watched features the request also edits (None when it edits none of them):
    a watched value is the feature as the model computed it there, read before the feature's
    own edit, so where a `set` or `add` acts it does not show the value written (and often 0)."""
    edited = {(e.sae, e.feature) for e in edits}
    both = [str(ref) for ref in watch if (ref.sae, ref.feature) in edited]
    if not both:
        return None
    names = ", ".join(dict.fromkeys(both))
    return (
        f"note: {names} is also edited by this request; a watched value is read before the "
        "feature's own edit (what the model computed there, not the value the edit wrote), so "
        "it may stay near 0 while the edit acts; the receipts say where the edit applied"
    )


def format_logprobs(chunks: Sequence[Chunk]) -> str:
    """One row per generated token: its index, id, text (decoded alone, from the most likely
    list when it is there), log-probability, and the most likely tokens with theirs."""
    header = ["#", "id", "token", "logprob", "most likely"]
    rows: list[list[str]] = []
    for chunk in chunks:
        for token_id, scored in zip(chunk.token_ids, chunk.logprobs, strict=False):
            texts = {t.token_id: t.text for t in scored.top}
            top = "  ".join(f"{_escaped(t.text)} {t.logprob:.3f}" for t in scored.top)
            text = _escaped(texts[token_id]) if token_id in texts else ""
            rows.append([str(len(rows)), str(token_id), text, f"{scored.logprob:.3f}", top])
    return _table(header, rows, left={2, 4})


def _table(header: list[str], rows: list[list[str]], *, left: set[int]) -> str:
    """Columns padded to their widest cell: right-aligned, but left-aligned in `left`."""
    widths = [len(cell) for cell in header]
    for row in rows:
        for i, cell in enumerate(row[: len(widths)]):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        padded = [
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=False))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


def _escaped(text: str) -> str:
    """A token's text quoted, with whitespace and control characters escaped (as repr does)."""
    return repr(text)


def _number(value: float) -> str:
    return f"{value:.4g}"


def format_inspected(tokens: Sequence[InspectedToken]) -> str:
    """One line per token: position, text (escaped), `special` or not, the top features as
    `sae:index value (label)`, then after '|' the named features as `sae:index=value`."""
    texts = [_escaped(token.text) for token in tokens]
    width = max((len(text) for text in texts), default=0)
    lines = []
    for pos, (token, text) in enumerate(zip(tokens, texts, strict=True)):
        line = f"{pos:>4}  {text:<{width}}  {'special' if token.special else '':<7}"
        top = ", ".join(
            f"{a.sae}:{a.feature} {_number(a.activation)}" + (f" ({a.label})" if a.label else "")
            for a in token.top
        )
        if top:
            line += f"  {top}"
        if token.features:
            named = "  ".join(
                f"{a.sae}:{a.feature}={_number(a.activation)}" for a in token.features
            )
            line += f"  | {named}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def format_matches(matches: Sequence[FeatureMatch]) -> str:
    """One match per line, best first: score, `sae:index`, label, then the typical maximum and
    firing frequency in parentheses where the server knows them, and "[by activation]" for
    a feature the model's reading of the query found."""
    refs = [f"{m.sae}:{m.feature}" for m in matches]
    width = max(len(ref) for ref in refs)
    return "\n".join(
        f"{m.score:8.3f}  {ref:<{width}}  {m.label}{_dose(m)}{_found(m)}".rstrip()
        for m, ref in zip(matches, refs, strict=True)
    )


def _found(match: FeatureMatch) -> str:
    return "  [by activation]" if match.found_by == "activation" else ""


def _dose(match: FeatureMatch) -> str:
    known = []
    if match.typical_max > 0:
        known.append(f"typical max {match.typical_max:g}")
    if match.frequency > 0:
        known.append(f"fires at {match.frequency * 100:.3g}% of tokens")
    return f"  ({', '.join(known)})" if known else ""


def format_contrast(contrast: Contrast) -> str:
    """Two sections, "toward a:" and "toward b:", of `sae:index mean_a mean_b label` lines."""
    every = contrast.toward_a + contrast.toward_b
    width = max((len(f"{c.sae}:{c.feature}") for c in every), default=0)

    def section(title: str, features: tuple[FeatureContrast, ...]) -> list[str]:
        lines = [f"{title}:"]
        for c in features:
            ref = f"{c.sae}:{c.feature}"
            means = f"{_number(c.mean_a):>9}  {_number(c.mean_b):>9}"
            lines.append(f"  {ref:<{width}}  {means}  {c.label}".rstrip())
        return lines if features else [*lines, "  (none)"]

    return "\n".join(
        section("toward a", contrast.toward_a) + section("toward b", contrast.toward_b)
    )


def format_description(desc: ModelDescription) -> str:
    """The model, SAEs (with kind and the whole sha256, which a preset's pin takes as it is),
    presets (one edit a line, in the CLI's syntax) and limits as aligned plain text."""
    m = desc.model
    lines = [
        f"model: {m.name}",
        f"  layers {m.num_layers}, d_model {m.d_model}, vocab {m.vocab_size}, "
        f"context {m.context_length}, chat {'yes' if m.chat else 'no'}"
        + (f", CUDA graphs {m.cuda_graphs}" if m.cuda_graphs else "")
        + (f", {m.dtype}" if m.dtype else ""),
        *([f"  batch invariance: {m.batch_invariance}"] if m.batch_invariance else []),
        "saes:" if desc.saes else "saes: none",
    ]
    for sae in desc.saes:
        line = (
            f"  {sae.name}: layer {sae.layer}, site {sae.site}, "
            f"d_sae {sae.d_sae}, d_model {sae.d_model}, labels {sae.labels}"
        )
        if sae.kind:
            line += f", kind {sae.kind}"
        if sae.sha256:
            line += f", sha256 {sae.sha256}"
        lines.append(line)
    lines.append("presets:" if desc.presets else "presets: none")
    for preset in desc.presets:
        lines.append(f"  {preset.name}: {preset.description}".rstrip())
        lines.extend(f"    {edit}" for edit in preset.edits)
    lines.append("limits:")
    for name, value in vars(desc.limits).items():
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        lines.append(f"  {name:<24}{shown}")
    return "\n".join(lines)


def format_card(card: FeatureCard) -> str:
    """A feature card as plain text: `sae:index  label`, its typical maximum and frequency
    where known, its top contexts, then the promoted and suppressed tokens (weight, text, id)."""
    lines = [f"{card.sae}:{card.feature}  {card.label or '(no label)'}"]
    known = []
    if card.typical_max > 0:
        known.append(f"typical max {card.typical_max:g}")
    if card.frequency > 0:
        known.append(f"fires at {card.frequency * 100:.3g}% of tokens")
    lines.append(f"  {', '.join(known)}" if known else "  typical max and frequency unknown")
    if card.top_contexts:
        lines.append("top contexts:")
        lines.extend(f"  {_escaped(text)}" for text in card.top_contexts)
    for title, tokens in (("promoted", card.promoted), ("suppressed", card.suppressed)):
        lines.append(f"{title} (W_dec · W_U):")
        lines.extend(_token_weights(tokens))
    return "\n".join(lines)


def _token_weights(tokens: Sequence[TokenWeight]) -> list[str]:
    weights = [_number(t.weight) for t in tokens]
    texts = [_escaped(t.text) for t in tokens]
    wide = max((len(w) for w in weights), default=0)
    tall = max((len(t) for t in texts), default=0)
    return [
        f"  {w:>{wide}}  {text:<{tall}}  id {t.token_id}"
        for w, text, t in zip(weights, texts, tokens, strict=True)
    ] or ["  (none)"]
