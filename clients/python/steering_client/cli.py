"""`steering-client`: generate steered text or describe the server, from a shell.

Text streams to stdout as it arrives; the finish reason, usage and seed go to stderr, so stdout
holds only the completion. A failed call exits 1 with the gRPC status name and message; a bad
argument exits 2 with a message naming its flag. The connection options (--target, --token, --tls,
--ca-cert, --timeout) go before or after the subcommand; given twice, the later one wins.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from steering_client.client import DEFAULT_TARGET, SteeringClient
from steering_client.edits import GRAMMAR, Edit, parse_edit
from steering_client.errors import SteeringClientError
from steering_client.responses import Chunk, ModelDescription

EXIT_RPC_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    root_certificates = None
    if args.ca_cert:
        try:
            with open(args.ca_cert, "rb") as f:
                root_certificates = f.read()
        except OSError as error:
            parser.error(f"--ca-cert: {error}")
    client = SteeringClient(
        args.target,
        token=args.token,
        root_certificates=root_certificates,
        tls=args.tls,
        timeout=args.timeout,
    )
    try:
        with client:
            return int(args.run(client, args))
    except ValueError as error:  # a request the client refuses to send, e.g. --top-k -1
        parser.error(str(error))
    except SteeringClientError as error:
        print(f"error: {error.code_name}: {error.details}", file=sys.stderr)
        return EXIT_RPC_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout's reader (e.g. `head`) has gone: stop quietly, and keep the interpreter's
        # final flush of stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _generate(client: SteeringClient, args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    chat = [(args.chat_role, prompt)] if args.chat_role else None
    chunks = client.generate(
        None if chat else prompt,
        chat=chat,
        edits=args.edit,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        ignore_eos=args.ignore_eos,
        request_id=args.request_id,
    )
    last: Chunk | None = None
    try:
        for chunk in chunks:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            last = chunk
    finally:
        sys.stdout.write("\n")  # ends the completion's line, even when the stream failed
        sys.stdout.flush()
    if last is not None:
        print(_summary(last), file=sys.stderr)
    return 0


def _summary(last: Chunk) -> str:
    parts = [f"finish_reason={last.finish_reason}"]
    if last.usage is not None:
        parts.append(f"prompt_tokens={last.usage.prompt_tokens}")
        parts.append(f"completion_tokens={last.usage.completion_tokens}")
    if last.seed is not None:
        parts.append(f"seed={last.seed}")
    return " ".join(parts)


def _describe(client: SteeringClient, args: argparse.Namespace) -> int:
    print(format_description(client.describe()))
    return 0


def format_description(desc: ModelDescription) -> str:
    """The model, SAEs and limits as aligned plain text."""
    m = desc.model
    lines = [
        f"model: {m.name}",
        f"  layers {m.num_layers}, d_model {m.d_model}, vocab {m.vocab_size}, "
        f"context {m.context_length}, chat {'yes' if m.chat else 'no'}",
        "saes:" if desc.saes else "saes: none",
    ]
    for sae in desc.saes:
        lines.append(
            f"  {sae.name}: layer {sae.layer}, site {sae.site}, "
            f"d_sae {sae.d_sae}, d_model {sae.d_model}"
        )
    lines.append("limits:")
    for name, value in vars(desc.limits).items():
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        lines.append(f"  {name:<24}{shown}")
    return "\n".join(lines)


def _edit(text: str) -> Edit:
    try:
        return parse_edit(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# A bad number is refused here, naming the flag, rather than by the request builder, which can
# only name the protobuf field (e.g. "sampling.top_k: Value out of range").
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
# gRPC turns a deadline beyond about 1e10 s into an immediate DEADLINE_EXCEEDED.
MAX_TIMEOUT_S = 10**9

_Number = TypeVar("_Number", int, float)


def _flag_error(flag: str, rule: str) -> argparse.ArgumentError:
    """A usage error that reads "FLAG must be RULE".

    An ArgumentError without an argument is printed as is, so the message is not prefixed
    with argparse's "argument FLAG: ", which would name the flag twice.
    """
    return argparse.ArgumentError(None, f"{flag} must be {rule}")


def _checked(
    flag: str, parse: Callable[[str], _Number], kind: str, broken: Callable[[_Number], str | None]
) -> Callable[[str], _Number]:
    """An argparse `type=` for a `kind` of number; `broken` says which rule a value breaks."""

    def convert(text: str) -> _Number:
        try:
            value = parse(text)
        except ValueError:
            raise _flag_error(flag, f"{kind}, not {text!r}") from None
        rule = broken(value)
        if rule is not None:
            raise _flag_error(flag, rule)
        return value

    return convert


def _integer(flag: str, broken: Callable[[int], str | None]) -> Callable[[str], int]:
    return _checked(flag, int, "an integer", broken)


def _real(flag: str, broken: Callable[[float], str | None]) -> Callable[[str], float]:
    return _checked(flag, float, "a number", broken)


def _uint32_rule(value: int) -> str | None:
    """What a count sent as a uint32 breaks, if anything: 0 keeps meaning "default"."""
    if value < 0:
        return "≥ 0"
    return f"≤ {UINT32_MAX}" if value > UINT32_MAX else None


def _seed_rule(value: int) -> str | None:
    return None if 0 <= value <= UINT64_MAX else f"between 0 and {UINT64_MAX}"


def _temperature_rule(value: float) -> str | None:
    return None if math.isfinite(value) and value >= 0 else "a finite number ≥ 0"


def _top_p_rule(value: float) -> str | None:
    return None if 0 <= value <= 1 else "between 0 and 1"  # NaN fails both comparisons


def _timeout_rule(value: float) -> str | None:
    if not value > 0:  # also NaN
        return "> 0"
    return f"≤ {MAX_TIMEOUT_S}" if value > MAX_TIMEOUT_S else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steering-client", description="Client of the steering server (gRPC)."
    )
    _add_global_options(parser, for_command=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = _add_command(commands, "generate", _generate, "stream a steered completion to stdout")
    _add_generate_options(gen)
    _add_command(commands, "describe", _describe, "print the model, SAEs and limits")
    return parser


def _add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    run: Callable[[SteeringClient, argparse.Namespace], int],
    summary: str,
) -> argparse.ArgumentParser:
    """A subcommand that runs `run` and takes the global options after its name too.

    Every subcommand is made here, so none can miss the global options.
    """
    description = summary[:1].upper() + summary[1:] + "."
    command = commands.add_parser(name, help=summary, description=description)
    command.set_defaults(run=run)
    _add_global_options(command, for_command=True)
    return command


def _add_global_options(parser: argparse.ArgumentParser, *, for_command: bool) -> None:
    """The connection options, accepted before the subcommand and after it.

    The top-level parser holds the real defaults. A subcommand's copy defaults to SUPPRESS, so
    it sets an option only when given after the subcommand: that value then wins, and one
    given before (or the default) is otherwise kept.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if for_command else value

    target = os.environ.get("STEERING_TARGET", DEFAULT_TARGET)
    group = parser.add_argument_group("connection options (before or after the command)")
    group.add_argument(
        "--target",
        default=default(target),
        help="server address HOST:PORT (env STEERING_TARGET; default "
        + target.replace("%", "%%")
        + ")",
    )
    group.add_argument(
        "--token",
        default=default(os.environ.get("STEERING_TOKEN")),
        help="bearer token sent as 'authorization: Bearer T' (env STEERING_TOKEN)",
    )
    group.add_argument(
        "--tls", action="store_true", default=default(False), help="use TLS with the system's roots"
    )
    group.add_argument(
        "--ca-cert",
        metavar="FILE",
        default=default(None),
        help="use TLS with these PEM root certs",
    )
    group.add_argument(
        "--timeout",
        type=_real("--timeout", _timeout_rule),
        metavar="S",
        default=default(None),
        help="deadline of the call in seconds",
    )


def _add_generate_options(gen: argparse.ArgumentParser) -> None:
    gen.add_argument("prompt", help="the prompt text ('-' reads it from stdin)")
    gen.add_argument(
        "--chat-role",
        metavar="ROLE",
        help="send the prompt as one chat message from ROLE (e.g. user), through the chat "
        "template; without it the prompt is raw text",
    )
    gen.add_argument(
        "--edit",
        type=_edit,
        action="append",
        default=[],
        metavar="EDIT",
        help=f"feature edit {GRAMMAR}, e.g. res12:1234=set:8 (repeatable)",
    )
    gen.add_argument(
        "--max-new-tokens",
        type=_integer("--max-new-tokens", _uint32_rule),
        default=0,
        metavar="N",
        help="0: the server default (default)",
    )
    gen.add_argument(
        "--temperature",
        type=_real("--temperature", _temperature_rule),
        default=0.0,
        metavar="T",
        help="0: greedy (default)",
    )
    gen.add_argument(
        "--top-k",
        type=_integer("--top-k", _uint32_rule),
        default=0,
        metavar="K",
        help="0: no top-k cut (default)",
    )
    gen.add_argument(
        "--top-p",
        type=_real("--top-p", _top_p_rule),
        default=0.0,
        metavar="P",
        help="0 or 1: no nucleus cut",
    )
    gen.add_argument(
        "--seed",
        type=_integer("--seed", _seed_rule),
        metavar="SEED",
        help="sampling seed (default: the server picks one)",
    )
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument(
        "--ignore-eos", action="store_true", help="keep generating past end-of-sequence"
    )
    gen.add_argument("--request-id", default="", help="id echoed in the server's logs")
