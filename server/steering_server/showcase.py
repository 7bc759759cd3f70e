"""`make demo`: start `steering-server --demo`, show a prompt unsteered and steered, stop it.

Everything a newcomer sees is real: the server runs as its own process on free ports, the text
comes over gRPC through the light client, and the server is stopped with SIGTERM at the end.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

from steering.demo import DEMO_FEATURES, DEMO_PROMPTS
from steering_client import Edit, SteeringClient

NEW_TOKENS = 40


def _start() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "steering_server",
            "--demo",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    target, ready = None, threading.Event()

    def read() -> None:
        nonlocal target
        assert proc.stdout is not None
        for line in proc.stdout:
            if m := re.search(r"gRPC listening on (127\.0\.0\.1:\d+)", line):
                target = m.group(1)
            if "serving demo" in line:
                ready.set()
        ready.set()  # the server exited: stop waiting

    threading.Thread(target=read, daemon=True).start()
    print("starting steering-server --demo (the first run builds the demo model: seconds) ...")
    if not ready.wait(600) or proc.poll() is not None or target is None:
        proc.kill()
        raise SystemExit("the demo server did not start")
    return proc, target


def _show(client: SteeringClient) -> bool:
    prompt = DEMO_PROMPTS[0]
    plain = client.generate_text(prompt, max_new_tokens=NEW_TOKENS)
    print(f"\nprompt: {prompt!r}\n\nunsteered:\n  {plain.strip()}")
    differs = False
    for name, feature in DEMO_FEATURES.items():
        edit = Edit(feature.sae, feature.feature, feature.mode.value, feature.value)
        steered = client.generate_text(prompt, edits=[edit], max_new_tokens=NEW_TOKENS)
        differs |= steered != plain
        print(f"\nsteered with {edit} ({name}: {feature.description}):\n  {steered.strip()}")
    return differs


def main() -> int:
    proc, target = _start()
    try:
        with SteeringClient(target) as client:
            differs = _show(client)
    finally:
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        code = proc.wait(60)
    print(f"\nserver stopped with SIGTERM: exit code {code} after {time.monotonic() - start:.1f} s")
    return 0 if differs and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
