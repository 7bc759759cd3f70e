"""`steering-features`: typical maxima and frequencies equal a brute-force computation (every
text read alone through Hugging Face's forward, encoded by the SAE math written out here), a run
stopped midway and started again writes what an uninterrupted run writes, and the label loader
reads the file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from steering import load_model, save_sae
from steering.demo.toy import random_sae
from steering.discovery.labels import load_label_file
from steering.models.gemma import special_token_ids
from steering.sae.formats import load_sae
from steering.train.features import describe_features
from steering_server.features_tool import main, partial_file

LAYER = 1
WORDS = [
    "the",
    "sea",
    "ship",
    "wave",
    "city",
    "street",
    "night",
    "loud",
    "calm",
    "blue",
    "rock",
    "boat",
    "harbour",
    "bread",
    "cook",
]


def _texts() -> list[str]:
    rng = random.Random(3)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(240)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, model_folders: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("features")
    save_sae(random_sae(64, 40, seed=5, threshold=0.3), root / "sae", "gemma_scope_2")
    (root / "a.txt").write_text("\n".join(_texts()[:100]) + "\n\n")
    (root / "b.txt").write_text("\n".join(_texts()[100:]))
    return root


def _argv(root: Path, folder: Path, out: Path) -> list[str]:
    return [
        "--model", str(folder), "--sae", f"s={root / 'sae'}@{LAYER}",
        "--texts", str(root / "a.txt"), str(root / "b.txt"), "--out", str(out), "--batch", "7",
    ]  # fmt: skip


def _brute_force(
    folder: Path, root: Path
) -> tuple[dict[int, float], dict[int, float], dict[int, int]]:
    lm = load_model(folder, dtype=torch.float32)
    sae = load_sae(root / "sae")
    special = set(special_token_ids(lm.tokenizer))
    rows = []
    for text in _texts():
        ids = lm.tokenizer(text).input_ids
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        x = out.hidden_states[LAYER + 1][0].float()
        pre = x @ sae.W_enc.float() + sae.b_enc.float()
        f = torch.where(pre > sae.threshold.float(), pre, torch.zeros_like(pre))
        rows.append(f[torch.tensor([i not in special for i in ids])])
    f = torch.cat(rows).numpy().astype(np.float64)
    top, share, count = {}, {}, {}
    for i in range(f.shape[1]):
        positive = f[:, i][f[:, i] > 0]
        if len(positive):
            top[i] = float(
                np.percentile(positive, 99.9) if len(positive) >= 1000 else positive.max()
            )
            share[i], count[i] = len(positive) / len(f), len(positive)
    return top, share, count


def test_maxima_and_frequencies_equal_a_brute_force_computation(
    setup: Path, model_folders: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = model_folders["gemma2"]
    out = setup / "out" / "explanations.json"
    assert main(_argv(setup, folder, out)) == 0
    assert "texts" in capsys.readouterr().err  # the progress bar
    entries = json.loads(out.read_text())
    top, share, counts = _brute_force(folder, setup)
    assert [int(e["index"]) for e in entries] == sorted(top)
    assert any(c >= 1000 for c in counts.values()) and any(c < 1000 for c in counts.values())
    for e in entries:
        i = int(e["index"])
        assert e["maxActApprox"] == pytest.approx(top[i], rel=1e-4, abs=1e-3), i
        assert e["frac_nonzero"] == pytest.approx(share[i], abs=1e-6), i
        assert e["description"] and 1 <= len(e["topContexts"]) <= 3
        assert all("[[" in c and c.endswith("]]") for c in e["topContexts"])
    read = load_label_file(out, 40)
    assert read.typical_max == {int(e["index"]): e["maxActApprox"] for e in entries}
    assert read.frequency == {int(e["index"]): e["frac_nonzero"] for e in entries}
    assert set(read.labels) == set(top)
    assert not partial_file(out).exists()


class _Killed(Exception):
    pass


def test_a_stopped_run_continues_and_writes_what_an_uninterrupted_run_writes(
    setup: Path, model_folders: dict[str, Path]
) -> None:
    folder = model_folders["gemma2"]
    whole, resumed = setup / "whole.json", setup / "resumed" / "explanations.json"
    assert main(_argv(setup, folder, whole)) == 0
    resumed.parent.mkdir()
    lm = load_model(folder, dtype=torch.float32)

    def kill(done: int, total: int) -> None:
        if done >= 21:
            raise _Killed

    with pytest.raises(_Killed):  # as `steering-features` runs it, stopped after 3 batches
        describe_features(
            lm.model, lm.tokenizer, load_sae(setup / "sae"), LAYER, _texts(), batch=7,
            state=partial_file(resumed), progress=kill,
        )  # fmt: skip
    saved = torch.load(partial_file(resumed), weights_only=False)
    assert saved["stats"]["texts_done"] == 21
    assert main(_argv(setup, folder, resumed)) == 0
    assert json.loads(resumed.read_text()) == json.loads(whole.read_text())
    assert not partial_file(resumed).exists()


def test_bad_input_exits_2_naming_the_flag(
    setup: Path, model_folders: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _argv(setup, model_folders["gemma2"], setup / "x.json")
    bad_layer = [a.replace(f"@{LAYER}", "@9") for a in argv]
    assert main(bad_layer) == 2 and "--sae" in capsys.readouterr().err
    (setup / "empty.txt").write_text("\n")
    empty = [*argv[:5], str(setup / "empty.txt"), *argv[-4:]]
    assert main(empty) == 2 and "--texts" in capsys.readouterr().err
