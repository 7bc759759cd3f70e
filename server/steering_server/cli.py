"""`steering-server`: command-line flags over `STEERING_*` variables over a config file.

steering-server --model PATH [--sae NAME=PATH@LAYER ...] [--host H] [--port P]
                [--metrics-port M] [--device auto|cpu|cuda] [--dtype auto|float32|bfloat16]
steering-server --demo [--port P] [--metrics-port M]

Every setting is a flag (generated from `Settings`, so `--help` lists them all). A bad setting
or file exits with code 2 and one line naming it, before any port is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from steering.errors import SteeringError
from steering_server import logs, preflight
from steering_server.settings import Settings, load_settings

log = logging.getLogger("steering_server")

EXIT_BAD_SETTINGS = 2
METAVARS = {
    "sae": "NAME=PATH@LAYER",
    "vector": "NAME=PATH@LAYER",
    "labels": "NAME=PATH",
    "auth_tokens": "TOKEN",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="steering-server",
        description="Serve steered Gemma generation over gRPC. Every option also reads from "
        "STEERING_<NAME> (e.g. STEERING_PORT) and from a TOML/JSON config file whose keys are "
        "the settings' names (e.g. metrics_port).",
        argument_default=argparse.SUPPRESS,  # only flags given on the command line override
    )
    p.add_argument("--config", type=Path, help="TOML or JSON settings file (or STEERING_CONFIG)")
    for name, field in Settings.model_fields.items():
        _add_flag(p, name, field)
    return p


def flag_of(name: str) -> str:
    """The command-line flag of the setting `name`."""
    extra = Settings.model_fields[name].json_schema_extra
    flag = extra.get("flag") if isinstance(extra, dict) else None
    return str(flag) if flag else "--" + name.replace("_", "-")


def _add_flag(p: argparse.ArgumentParser, name: str, field: FieldInfo) -> None:
    default = field.get_default(call_default_factory=True)
    shown = "" if default in (None, False, []) else f"; default {default}"
    kwargs: dict[str, Any] = {
        "dest": name,
        "help": f"{field.description} (env STEERING_{name.upper()}{shown})",
    }
    kind = _plain(field.annotation)
    if kind is bool:
        kwargs["action"] = "store_true"
    elif typing.get_origin(kind) is list:
        kwargs.update(action="append", metavar=METAVARS.get(name))
    elif typing.get_origin(kind) is typing.Literal:
        kwargs["choices"] = typing.get_args(kind)
    else:
        kwargs["type"] = kind
    p.add_argument(flag_of(name), **kwargs)


def _plain(annotation: Any) -> Any:
    """`X | None` -> X."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (kind,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kind
    return annotation


def settings_from(argv: list[str] | None) -> Settings:
    args: dict[str, Any] = vars(parser().parse_args(argv))
    config = args.pop("config", None) or os.environ.get("STEERING_CONFIG")
    return load_settings(args, Path(config) if config else None)


def one_line(exc: ValidationError) -> str:
    """A settings error as one line naming the flag (pydantic's own report spans many)."""
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        where, message = name, "unknown setting"
    else:
        where = flag_of(name) if name in Settings.model_fields else name
    more = exc.error_count() - 1
    return f"{where}: {message}" + (f" (and {more} more)" if more else "")


async def serve(settings: Settings) -> None:
    # Here, not at the top: torch and transformers take seconds to import, and `--help` or a
    # bad setting is answered before them.
    from steering_server.app import SteeringApp

    app = SteeringApp(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        """The first SIGTERM or SIGINT drains; a second one ends the drain at once."""
        if stop.is_set():
            app.hurry()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await app.start()
    except BaseException:
        await app.drain(grace=0)  # a load that failed: close what was opened, then report
        raise
    await stop.wait()
    log.info("signal received")
    await app.drain()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from(argv)
        preflight.check(settings)
    except ValidationError as exc:
        return _fail(one_line(exc))
    except (preflight.StartupError, ValueError, OSError) as exc:
        return _fail(str(exc))
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except (SteeringError, preflight.StartupError) as exc:  # found while loading, after binding
        return _fail(str(exc))
    return 0


def _fail(message: str) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "cannot start"
    sys.stderr.write(f"steering-server: {first}\n")
    return EXIT_BAD_SETTINGS


if __name__ == "__main__":
    sys.exit(main())
