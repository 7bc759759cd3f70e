"""`steering-server`: command-line flags over `STEERING_*` variables over a config file.

steering-server --model PATH [--sae NAME=PATH@LAYER ...] [--host H] [--port P]
                [--metrics-port M] [--device auto|cpu|cuda] [--dtype auto|float32|bfloat16]
steering-server --demo [--port P] [--metrics-port M]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from steering_server.app import SteeringApp
from steering_server.settings import Settings, load_settings

log = logging.getLogger("steering_server")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="steering-server",
        description="Serve steered Gemma generation over gRPC. Every option also reads from "
        "STEERING_<NAME> (e.g. STEERING_PORT) and from a TOML/JSON config file.",
        argument_default=argparse.SUPPRESS,  # only flags given on the command line override
    )
    p.add_argument("--config", type=Path, help="TOML or JSON settings file (or STEERING_CONFIG)")
    p.add_argument("--model", type=Path, help="local Hugging Face model folder")
    p.add_argument(
        "--sae", action="append", metavar="NAME=PATH@LAYER", help="an SAE to serve (repeatable)"
    )
    p.add_argument("--demo", action="store_true", help="serve a small built-in model and SAE")
    p.add_argument("--host", help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 picks a free one)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 9090; 0 picks one)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--max-active-rows", type=int, help="rows decoded together (default 16)")
    p.add_argument(
        "--max-queued-requests", type=int, help="requests waiting beyond those (default 64)"
    )
    p.add_argument("--max-new-tokens", type=int, help="largest max_new_tokens a request may ask")
    p.add_argument(
        "--auth-token", dest="auth_tokens", action="append", help="accepted bearer token"
    )
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument(
        "--tls-client-ca", type=Path, help="require client certificates signed by this CA"
    )
    p.add_argument(
        "--grace-period", dest="grace_period_s", type=float, help="seconds to drain on SIGTERM"
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    return p


def settings_from(argv: list[str] | None) -> Settings:
    args: dict[str, Any] = vars(parser().parse_args(argv))
    config = args.pop("config", None) or os.environ.get("STEERING_CONFIG")
    return load_settings(args, Path(config) if config else None)


async def serve(settings: Settings) -> None:
    app = SteeringApp(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    await stop.wait()
    log.info("signal received")
    await app.drain()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from(argv)
    except (ValidationError, ValueError, OSError) as exc:
        sys.stderr.write(f"steering-server: {exc}\n")
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
