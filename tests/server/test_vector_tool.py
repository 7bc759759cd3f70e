"""`steering-vector`: a difference-of-means vector equals the mean residuals computed by hand,
and `steering-server --vector` can serve what it writes; bad input exits 2 naming the flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steering import load_model
from steering.sae.vectors import load_vectors
from steering_server.vector_tool import main

A = ["The sea was calm and blue.", "", "Waves broke on the rocks."]
B = ["The city at night is loud.", "Cars were loud on the street."]


def _mean(lm: object, texts: list[str], layer: int) -> torch.Tensor:
    per_text = []
    for text in texts:
        ids = lm.tokenizer(text).input_ids  # type: ignore[attr-defined]
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True)  # type: ignore[attr-defined]
        hidden = out.hidden_states[layer + 1][0]  # the output of decoder layer `layer`
        keep = torch.tensor([i not in lm.tokenizer.all_special_ids for i in ids])  # type: ignore[attr-defined]
        per_text.append(hidden[keep].mean(0))
    return torch.stack(per_text).mean(0)


def test_the_vector_is_the_difference_of_mean_residuals(
    tmp_path: Path, model_folders: dict[str, Path]
) -> None:
    (tmp_path / "a.txt").write_text("\n".join(A))
    (tmp_path / "b.txt").write_text("\n".join(B))
    out = tmp_path / "v" / "sea.safetensors"
    folder = model_folders["gemma2"]
    argv = ["--model", str(folder), "--layer", "1", "--a", str(tmp_path / "a.txt")]
    assert main([*argv, "--b", str(tmp_path / "b.txt"), "--out", str(out)]) == 0
    sae = load_vectors(out)
    lm = load_model(folder, dtype=torch.float32)
    expected = _mean(lm, [t for t in A if t], 1) - _mean(lm, B, 1)
    assert sae.d_sae == 1 and torch.allclose(sae.W_dec[0], expected, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"--layer": "9"}, "--layer 9"), ({"--a": "empty.txt"}, "--a"), ({"--b": "nope.txt"}, "--b")],
)
def test_bad_input_exits_2_naming_the_flag(
    tmp_path: Path,
    model_folders: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    change: dict[str, str],
    message: str,
) -> None:
    (tmp_path / "a.txt").write_text("\n".join(A))
    (tmp_path / "empty.txt").write_text("\n\n")
    args = {
        "--model": str(model_folders["gemma2"]),
        "--layer": "1",
        "--a": "a.txt",
        "--b": "a.txt",
        "--out": "o.safetensors",
    } | change
    argv = [
        part
        for flag, value in args.items()
        for part in (flag, str(tmp_path / value) if flag in ("--a", "--b", "--out") else value)
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steering-vector: ") and message in err[0]
