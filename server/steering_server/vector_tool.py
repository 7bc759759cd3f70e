"""`steering-vector`: a difference-of-means steering vector from two text files, offline.

steering-vector --model PATH --layer L --a FILE --b FILE --out FILE.safetensors

Runs the model folder here (the server exposes SAE features, not raw residuals), reads the
output of decoder layer L at every steerable position, and writes mean(a) − mean(b) as a
[1, d_model] safetensors file that `steering-server --vector NAME=FILE@L` serves. Files hold one
text per line; blank lines are skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from steering import load_model
from steering.errors import SteeringError
from steering.train.vectors import difference_of_means


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steering-vector", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="local Hugging Face model folder")
    p.add_argument("--layer", type=int, required=True, help="decoder layer whose output to read")
    p.add_argument("--a", type=Path, required=True, help="texts to steer toward, one per line")
    p.add_argument("--b", type=Path, required=True, help="texts to steer away from")
    p.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    return p


def _texts(flag: str, path: Path) -> list[str]:
    try:
        texts = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror}") from exc
    if not texts:
        raise ValueError(f"{flag} {path}: no text in the file")
    return texts


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        a, b = _texts("--a", args.a), _texts("--b", args.b)
        lm = load_model(args.model, dtype=torch.float32)
        layers = int(lm.model.config.get_text_config().num_hidden_layers)
        if not 0 <= args.layer < layers:
            raise ValueError(f"--layer {args.layer}: the model has layers 0 to {layers - 1}")
        vector = difference_of_means(lm.model, lm.tokenizer, args.layer, a, b)
    except (ValueError, SteeringError) as exc:
        sys.stderr.write(f"steering-vector: {exc}\n")
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"vector": vector[None].contiguous()}, str(args.out))
    sys.stderr.write(
        f"wrote {args.out}: 1 vector of width {vector.numel()}, norm {vector.norm():.4g}, "
        f"from {len(a)} and {len(b)} texts at layer {args.layer}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
