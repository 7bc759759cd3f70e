"""`steering-features`: describe an SAE's features from texts read through the model, offline.

steering-features --model PATH --sae NAME=PATH@LAYER --texts FILE... --out FILE

Reads every text (one per line, blank lines skipped, each tokenized as a prompt) through the
model folder here, batched, encodes the output of decoder layer LAYER with the SAE, and writes a
Neuronpedia-shaped JSON array that `steering-server --labels NAME=FILE` reads: per feature that
fired its `index`, a `description` from its top tokens, `maxActApprox` (the 99.9th percentile of
its positive activations at steerable positions; the maximum when it has fewer than 1,000),
`frac_nonzero` (the share of steerable positions where it fired) and `topContexts`.

A run saves its progress after every batch in FILE.partial beside --out; run the same command
again after a stop and it continues from there (other texts or another SAE start over). The
partial file is removed once --out is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from steering import load_model
from steering.errors import SteeringError
from steering.sae.formats import load_sae
from steering.train.features import describe_features, explanations
from steering.train.harvest import progress_bar
from steering_server.settings import SaeSpec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steering-features", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="local Hugging Face model folder")
    p.add_argument("--sae", required=True, metavar="NAME=PATH@LAYER", help="the SAE to describe")
    p.add_argument(
        "--texts", type=Path, nargs="+", required=True, help="files of texts, one per line"
    )
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    p.add_argument("--batch", type=int, default=8, help="texts read at once (default 8)")
    return p


def partial_file(out: Path) -> Path:
    """Where a run keeps its progress: beside --out."""
    return out.with_name(out.name + ".partial")


def _texts(paths: list[Path]) -> list[str]:
    texts: list[str] = []
    for path in paths:
        try:
            texts += [line for line in path.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise ValueError(f"--texts {path}: {exc.strerror}") from exc
    if not texts:
        raise ValueError("--texts: no text in the files")
    return texts


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        spec = SaeSpec.parse(args.sae)
        if args.batch < 1:
            raise ValueError(f"--batch must be 1 or more, got {args.batch}")
        texts = _texts(args.texts)
        lm = load_model(args.model, dtype=torch.float32)
        layers = int(lm.model.config.get_text_config().num_hidden_layers)
        if not 0 <= spec.layer < layers:
            raise ValueError(f"--sae {args.sae}: the model has layers 0 to {layers - 1}")
        sae = load_sae(spec.path)
    except (ValueError, SteeringError) as exc:
        sys.stderr.write(f"steering-features: {exc}\n")
        return 2
    state = partial_file(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    stats = describe_features(
        lm.model, lm.tokenizer, sae, spec.layer, texts, batch=args.batch, state=state,
        progress=lambda done, total: progress_bar("texts", done, total, start),
    )  # fmt: skip
    entries = explanations(
        stats, lm.tokenizer, model_id=args.model.name, layer=f"{spec.layer}-{spec.name}"
    )
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(entries, indent=0) + "\n")
    tmp.replace(args.out)
    state.unlink(missing_ok=True)
    sys.stderr.write(
        f"wrote {args.out}: {len(entries)} of {sae.d_sae} features fired over "
        f"{stats.positions} steerable positions of {len(texts)} texts\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
