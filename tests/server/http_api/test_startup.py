"""The HTTP port at startup: a port in use is refused before anything binds; --no-http binds
none; the ready file names the port chosen."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from steering_server.cli import main
from tests.server.harness import ServerThread


def test_an_http_port_in_use_exits_2_before_binding(
    model_folders: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        argv = ["--model", str(model_folders["gemma2"]), "--host", "127.0.0.1", "--port", "0",
                "--metrics-port", "0", "--http-port", port]  # fmt: skip
        assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("steering-server: --http-port: cannot bind")


def test_no_http_binds_none_and_the_ready_file_names_the_port(
    model_folders: dict[str, Path], tmp_path: Path
) -> None:
    import json

    srv = ServerThread(model=model_folders["gemma2"], no_http=True)
    try:
        assert srv.app.http is None and srv.app.http_port == 0
    finally:
        srv.close()
    ready = tmp_path / "ready.json"
    srv = ServerThread(model=model_folders["gemma2"], ready_file=ready)
    try:
        assert json.loads(ready.read_text())["http_port"] == srv.app.http_port > 0
    finally:
        srv.close()
