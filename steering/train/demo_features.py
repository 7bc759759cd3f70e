"""`make demo-features`: the demo SAE's label file given `steering-features`' fields.

    python -m steering.train.demo_features texts --corpus build/demo-features/corpus \\
        --out build/demo-features/held-out.txt
    steering-features --model MODEL --sae demo=steering/demo/sae@6 \\
        --texts build/demo-features/held-out.txt --out build/demo-features/features.json
    python -m steering.train.demo_features merge build/demo-features/features.json

`texts` writes every held-out document of the demo's corpus (`steering.train.corpus`, the
tenth none of the SAE was trained on) as passages of whole sentences of at most
`PASSAGE_TOKENS` tokens, one per line, as the demo's labelling read 128-token windows.
`merge` adds `maxActApprox` and `frac_nonzero` to the shipped `explanations.json`, by index,
and keeps every other field (the labels, `maxActivation`, `frequency`, `topContexts`) as it is.
`model` prints the demo model's folder (converted once from its GGUF).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from steering.train import corpus

PASSAGE_TOKENS = 128  # BOS included, as the demo's labelling windows
FIELDS = ("maxActApprox", "frac_nonzero")  # what `merge` takes from steering-features
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def passages(docs: Iterable[corpus.Document], tokenizer: Any) -> Iterator[str]:
    """The held-out documents as one-line passages: a document's lines cut into sentences (and
    WordNet's glosses, one a line), consecutive ones joined by a space while the passage (with
    BOS) stays within `PASSAGE_TOKENS` tokens; a longer sentence is a passage of its own."""
    for doc in docs:
        if not doc.held_out:
            continue
        current: list[str] = []
        size = 1  # BOS
        for line in doc.text.splitlines():
            for sentence in _SENTENCE_END.split(line.strip()):
                if not sentence:
                    continue
                n = len(tokenizer(" " + sentence, add_special_tokens=False).input_ids)
                if current and size + n > PASSAGE_TOKENS:
                    yield " ".join(current)
                    current, size = [], 1
                current.append(sentence)
                size += n
        if current:
            yield " ".join(current)


def merge(shipped: list[dict[str, Any]], described: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`shipped` with `FIELDS` of `described` (same SAE, matched by index) added after its own
    `maxActivation`/`frequency`; a feature `described` lacks (it never fired) is left as is."""
    by_index = {str(entry["index"]): entry for entry in described}
    merged = []
    for entry in shipped:
        found = by_index.get(str(entry["index"]))
        new = {k: v for k, v in entry.items() if k not in FIELDS}
        if found is not None:
            extra = {k: found[k] for k in FIELDS if k in found}
            keys = list(new)
            at = keys.index("topContexts") if "topContexts" in keys else len(keys)
            new = {**dict(list(new.items())[:at]), **extra, **dict(list(new.items())[at:])}
        merged.append(new)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steering.train.demo_features")
    sub = parser.add_subparsers(dest="command", required=True)
    texts = sub.add_parser("texts", help="write the held-out passages, one per line")
    texts.add_argument("--corpus", type=Path, default=Path("build/demo-features/corpus"))
    texts.add_argument("--out", type=Path, default=Path("build/demo-features/held-out.txt"))
    sub.add_parser("model", help="print the demo model's folder")
    into = sub.add_parser("merge", help="add steering-features' fields to the demo's labels")
    into.add_argument("features", type=Path, help="steering-features' JSON for the demo SAE")
    into.add_argument("--into", type=Path, default=None, help="default: the shipped labels")
    args = parser.parse_args(argv)

    from steering.demo.gemma import SHIPPED_SAE, default_demo_dir, prepare_model
    from steering.discovery.labels import EXPLANATIONS_FILE

    if args.command == "model":
        sys.stdout.write(f"{prepare_model(default_demo_dir())}\n")
        return 0
    if args.command == "texts":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(prepare_model(default_demo_dir()))
        corpus.fetch(args.corpus)
        lines = list(passages(corpus.documents(args.corpus), tokenizer))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        sys.stderr.write(f"wrote {args.out}: {len(lines)} held-out passages\n")
        return 0
    target: Path = args.into or SHIPPED_SAE / EXPLANATIONS_FILE
    shipped = json.loads(target.read_text(encoding="utf-8"))
    described = json.loads(args.features.read_text(encoding="utf-8"))
    merged = merge(shipped, described)
    target.write_text(json.dumps(merged, indent=0) + "\n", encoding="utf-8")
    have = sum(1 for entry in merged if "maxActApprox" in entry)
    sys.stderr.write(f"wrote {target}: {have} of {len(merged)} features given {FIELDS}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
