"""`make demo`: start `steering-server --demo` (Gemma 3 270M with the SAE trained for it), show
what its SAE reads in a sentence, a search of its labels, a prompt unsteered and steered with a
feature watched rising, then stop it and print the commands to try it by hand.

Everything a newcomer sees is real: the server runs as its own process on free ports, the text
comes over gRPC through the light client, and the server is stopped with SIGTERM at the end.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from steering.demo.gemma import DEMO_FEATURES, DEMO_PROMPT, model_converted
from steering.demo.gemma import MODEL_NAME as DEMO_MODEL_NAME
from steering_client import Completion, Edit, FeatureRef, SteeringClient

NEW_TOKENS = 32
SENTENCE = "The old sailors rowed their boat across the sea."
SEARCH = "sea"
FEATURE = next(iter(DEMO_FEATURES))  # the feature the demo steers with


def _start(ready: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the demo server, logging to `log`; its target, once it wrote its ready file."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "steering_server", "--demo", "--host", "127.0.0.1",
                "--port", "0", "--metrics-port", "0", "--http-port", "0",
                "--ready-file", str(ready),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    print(_starting_line())
    deadline = time.monotonic() + 600
    while not ready.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"the demo server did not start:\n{tail}")
        time.sleep(0.1)
    info = json.loads(ready.read_text())
    print(
        f"gRPC on {info['target']}; HTTP (OpenAI-compatible) on http://127.0.0.1:{info['http_port']}"
    )
    return proc, str(info["target"])


def _starting_line() -> str:
    """What `make demo` says while the server starts: the conversion only when it happens."""
    if model_converted():
        return "starting steering-server --demo ..."
    return (
        "starting steering-server --demo (converting Gemma 3 270M from its GGUF first, once: "
        "a minute or two) ..."
    )


def _discover(client: SteeringClient) -> None:
    """What the SAE reads in a sentence (top features with their labels), and a search."""
    print(f"\nthe top features of {SENTENCE!r} (steering-client inspect):")
    for token in client.inspect(SENTENCE, top_k=2):
        top = ", ".join(f"{f.sae}:{f.feature} {f.activation:.0f} ({f.label})" for f in token.top)
        print(f"  {token.text!r:>12}  {top or '-'}")
    print(f"\nfeatures whose label mentions {SEARCH!r} (steering-client search {SEARCH}):")
    for match in client.search(SEARCH, limit=3):
        print(f"  {match.sae}:{match.feature}  {match.label}")


def _show(client: SteeringClient) -> bool:
    prompt = DEMO_PROMPT
    chosen = DEMO_FEATURES[FEATURE]
    watch = [FeatureRef(chosen.sae, chosen.feature)]
    plain = Completion.from_chunks(client.generate(prompt, max_new_tokens=NEW_TOKENS, watch=watch))
    print(f"\nprompt: {prompt!r}\n\nunsteered:\n  {_one_line(plain.text)}")
    print(f"  (watching {watch[0]}: mean {_mean(plain):.2f})")
    differs = False
    for name, feature in DEMO_FEATURES.items():
        edit = Edit(feature.sae, feature.feature, feature.mode.value, feature.value)
        steered = Completion.from_chunks(
            client.generate(prompt, edits=[edit], max_new_tokens=NEW_TOKENS, watch=watch)
        )
        differs |= steered.text != plain.text
        print(
            f"\nsteered with {edit} ({name}: {feature.description}):\n  {_one_line(steered.text)}"
        )
        print(f"  (watching {watch[0]}: mean {_mean(steered):.2f}; {steered.receipts[0]})")
    return differs


def _one_line(text: str) -> str:
    """A completion on one indented line: its line breaks and runs of spaces as one space."""
    return " ".join(text.split())


def _mean(completion: Completion) -> float:
    values = [w[0] for w in completion.watched]
    return sum(values) / max(len(values), 1)


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        return _run(Path(folder))


def _run(folder: Path) -> int:
    proc, target = _start(folder / "ready.json", folder / "server.log")
    try:
        with SteeringClient(target) as client:
            _discover(client)
            differs = _show(client)
    finally:
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        code = proc.wait(60)
    print(f"\nserver stopped with SIGTERM: exit code {code} after {time.monotonic() - start:.1f} s")
    _by_hand()
    return 0 if differs and code == 0 else 1


def _by_hand() -> None:
    chosen = DEMO_FEATURES[FEATURE]
    edit = f"{chosen.sae}:{chosen.feature}={chosen.mode.value}:{chosen.value:g}"
    print(
        "\ntry it by hand: in one terminal\n"
        "  .venv/bin/steering-server --demo --port 50051\n"
        "and in another\n"
        f"  .venv/bin/steering-client search {SEARCH}\n"
        f"  .venv/bin/steering-client inspect {SENTENCE!r} --top-k 3\n"
        f"  .venv/bin/steering-client generate {DEMO_PROMPT!r} --edit {edit} --compare\n"
        f"  .venv/bin/steering-client generate 'Tell me a story.' --edit {edit} "
        f"--watch {chosen.sae}:{chosen.feature}\n"
        "or over HTTP (port 8000 by default):\n"
        "  curl -s localhost:8000/v1/completions -H 'content-type: application/json' -d "
        f'\'{{"model": "{DEMO_MODEL_NAME}", "prompt": {json.dumps(DEMO_PROMPT)}, '
        f'"max_tokens": 32, "temperature": 0, "steering": {{"edits": ["{edit}"]}}}}\'\n'
        "(steering-client --help lists the rest; the server stops with Ctrl-C)"
    )


if __name__ == "__main__":
    sys.exit(main())
