"""`steering-client`: generate steered text, describe the server, and find features (inspect,
search, contrast), from a shell.

Generated text streams to stdout as it arrives; the watched features' table, the edits' receipts
and the finish reason, usage and seed go to stderr, so stdout holds only the completion.
`generate --compare` prints the unsteered and the steered completion side by side (or, on a
terminal narrower than 100 columns, as interleaved labelled lines) once both have finished. A failed
call exits 1 with the gRPC status name and message; a bad argument exits 2 with one line naming
its flag and one line of hint. The connection options (--target, --token, --tls, --ca-cert,
--timeout, --wait) go before or after the subcommand; given twice, the later one wins.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc

from steering_client.client import DEFAULT_TARGET, SteeringClient
from steering_client.edits import (
    GRAMMAR,
    REF_GRAMMAR,
    Edit,
    FeatureRef,
    parse_edits,
    parse_feature_ref,
)
from steering_client.errors import SteeringClientError
from steering_client.render import (
    COMPARED,
    format_comparison,
    format_contrast,
    format_description,
    format_inspected,
    format_matches,
    format_watched,
    format_watched_completion,
)
from steering_client.request import ChatMessage
from steering_client.responses import Chunk, Comparison, Completion
from steering_client.rules import RULE_GRAMMAR, Rule, parse_rule

EXIT_RPC_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away
PROG = "steering-client"
# --wait: how often to ask a server that is not serving yet, and the most the channel waits
# between two tries to connect (gRPC's default backoff grows to 2 minutes).
WAIT_POLL_S = 0.25
WAIT_RECONNECT_MS = 1000


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage error is one line and a hint, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\nhint: see '{self.prog} --help'\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    usage: _Parser = args.command_parser  # the errors below are the command's
    root_certificates = None
    if args.ca_cert:
        try:
            with open(args.ca_cert, "rb") as f:
                root_certificates = f.read()
        except OSError as error:
            usage.error(f"--ca-cert: {error}")
    client = SteeringClient(
        args.target,
        token=args.token,
        root_certificates=root_certificates,
        tls=args.tls,
        timeout=args.timeout,
        options=[("grpc.max_reconnect_backoff_ms", WAIT_RECONNECT_MS)] if args.wait else (),
    )
    try:
        with client:
            if args.wait:
                _wait_until_serving(client, args.wait)
            return int(args.run(client, args))
    except ValueError as error:  # a request the client refuses to send, e.g. --top-k -1
        usage.error(str(error))
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


def _wait_until_serving(client: SteeringClient, seconds: float) -> None:
    """Ask DescribeModel until it answers, while the server is unreachable or still loading
    (UNAVAILABLE), for at most `seconds`; any other failure is raised at once."""
    give_up = time.monotonic() + seconds
    last = "nothing answered"
    while (left := give_up - time.monotonic()) > 0:
        try:
            client.describe(timeout=left)
            return
        except SteeringClientError as error:
            if error.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if error.code == grpc.StatusCode.UNAVAILABLE:
                last = error.details
        time.sleep(max(min(WAIT_POLL_S, give_up - time.monotonic()), 0))
    raise SteeringClientError(
        grpc.StatusCode.UNAVAILABLE, f"not serving after waiting {seconds:g} s: {last}"
    )


def _input(args: argparse.Namespace) -> tuple[str | None, list[ChatMessage] | None]:
    """The (prompt, chat) of a command taking TEXT ('-': stdin) and --chat-role."""
    text = sys.stdin.read() if args.text == "-" else args.text
    if args.chat_role:
        return None, [(args.chat_role, text)]
    return text, None


def _generate(client: SteeringClient, args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(client, args)
    prompt, chat = _input(args)
    stream = client.generate(prompt, chat=chat, **_generate_arguments(args))
    chunks: list[Chunk] = []
    try:
        for chunk in stream:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            chunks.append(chunk)
    finally:
        sys.stdout.write("\n")  # ends the completion's line, even when the stream failed
        sys.stdout.flush()
    if args.watch:
        print(format_watched(args.watch, chunks), file=sys.stderr)
    if chunks:
        last = chunks[-1]
        for receipt in last.receipts:
            print(receipt, file=sys.stderr)
        print(_summary(last), file=sys.stderr)
    return 0


def _generate_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments `generate` and `compare` share, from the command line."""
    names = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop", "ignore_eos")
    return {
        "edits": args.edit,
        "rules": args.rule,
        "preset": args.preset,
        "watch": args.watch,
        "request_id": args.request_id,
        **{name: getattr(args, name) for name in names},
    }


def _compare(client: SteeringClient, args: argparse.Namespace) -> int:
    if not (args.edit or args.rule or args.preset):
        # A ValueError is a usage error in `main`.
        raise ValueError("--compare: nothing to compare: give --edit, --rule or --preset")
    prompt, chat = _input(args)
    comparison = client.compare(prompt, chat=chat, **_generate_arguments(args))
    columns = shutil.get_terminal_size().columns
    print(format_comparison(comparison, columns))
    runs = dict(zip(COMPARED, (comparison.unsteered, comparison.steered), strict=True))
    if args.watch:
        for name, run in runs.items():
            print(f"{name}:", file=sys.stderr)
            print(format_watched_completion(args.watch, run), file=sys.stderr)
    for receipt in comparison.steered.receipts:
        print(receipt, file=sys.stderr)
    for name, run in runs.items():
        print(f"{name}: {_summary(run, seed=False)}", file=sys.stderr)
    print(_pair_seed(comparison, args.temperature), file=sys.stderr)
    return 0


def _pair_seed(comparison: Comparison, temperature: float) -> str:
    """The seed of a compared pair, said once: greedy runs draw nothing, so they have none."""
    if temperature == 0:
        return "greedy: no seed (temperature 0)"
    unsteered, steered = comparison.unsteered.seed, comparison.steered.seed
    if unsteered == steered:
        return f"seed={steered} (both runs)"
    return f"seeds: unsteered={unsteered} steered={steered}"


def _inspect(client: SteeringClient, args: argparse.Namespace) -> int:
    prompt, chat = _input(args)
    tokens = client.inspect(
        prompt,
        chat=chat,
        saes=args.sae,
        top_k=args.top_k,
        features=args.feature,
        edits=args.edit,
    )
    print(format_inspected(tokens))
    return 0


def _search(client: SteeringClient, args: argparse.Namespace) -> int:
    matches = client.search(args.query, sae=args.sae, limit=args.limit)
    if matches:
        print(format_matches(matches))
    else:
        print("no matches", file=sys.stderr)
    return 0


def _contrast(client: SteeringClient, args: argparse.Namespace) -> int:
    print(format_contrast(client.contrast(args.a, args.b, sae=args.sae, top_k=args.top_k)))
    return 0


def _summary(last: Chunk | Completion, *, seed: bool = True) -> str:
    parts = [f"finish_reason={last.finish_reason}"]
    if last.usage is not None:
        parts.append(f"prompt_tokens={last.usage.prompt_tokens}")
        parts.append(f"completion_tokens={last.usage.completion_tokens}")
    if seed and last.seed is not None:
        parts.append(f"seed={last.seed}")
    return " ".join(parts)


def _describe(client: SteeringClient, args: argparse.Namespace) -> int:
    print(format_description(client.describe()))
    return 0


def _edits(text: str) -> list[Edit]:
    try:
        return parse_edits(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _rule(text: str) -> Rule:
    try:
        return parse_rule(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _feature_ref(text: str) -> FeatureRef:
    try:
        return parse_feature_ref(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _texts_file(flag: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse `type=` reading one text per line of a UTF-8 file, blank lines skipped."""

    def read(path: str) -> tuple[str, ...]:
        try:
            with open(path, encoding="utf-8") as f:
                texts = tuple(line for line in f.read().splitlines() if line.strip())
        except (OSError, UnicodeDecodeError) as error:
            raise argparse.ArgumentError(None, f"{flag}: {error}") from None
        if not texts:
            raise argparse.ArgumentError(None, f"{flag}: {path} holds no text (one per line)")
        return texts

    return read


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


def _wait_rule(value: float) -> str | None:
    if not (math.isfinite(value) and value >= 0):
        return "a finite number ≥ 0"
    return f"≤ {MAX_TIMEOUT_S}" if value > MAX_TIMEOUT_S else None


def _timeout_rule(value: float) -> str | None:
    if not value > 0:  # also NaN
        return "> 0"
    return f"≤ {MAX_TIMEOUT_S}" if value > MAX_TIMEOUT_S else None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Client of the steering server (gRPC).")
    parser.set_defaults(command_parser=parser)
    _add_global_options(parser, for_command=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = _add_command(commands, "generate", _generate, "stream a steered completion to stdout")
    _add_generate_options(gen)
    _add_command(commands, "describe", _describe, "print the model, SAEs, presets and limits")
    inspect = _add_command(
        commands, "inspect", _inspect, "print what the SAEs read at every token of a text"
    )
    _add_inspect_options(inspect)
    search = _add_command(commands, "search", _search, "find features by their labels")
    _add_search_options(search)
    contrast = _add_command(
        commands, "contrast", _contrast, "print the features that most separate two sets of texts"
    )
    _add_contrast_options(contrast)
    return parser


def _add_command(
    commands: argparse._SubParsersAction[_Parser],
    name: str,
    run: Callable[[SteeringClient, argparse.Namespace], int],
    summary: str,
) -> argparse.ArgumentParser:
    """A subcommand that runs `run` and takes the global options after its name too.

    Every subcommand is made here, so none can miss the global options.
    """
    description = summary[:1].upper() + summary[1:] + "."
    command = commands.add_parser(name, help=summary, description=description)
    command.set_defaults(run=run, command_parser=command)
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
    group.add_argument(
        "--wait",
        type=_real("--wait", _wait_rule),
        metavar="S",
        default=default(0.0),
        help="wait up to S seconds for a server that is starting or loading its model "
        "(default 0: fail UNAVAILABLE at once)",
    )


def _add_input_options(command: argparse.ArgumentParser, what: str) -> None:
    """TEXT ('-': stdin), --chat-role and --edit, as generate and inspect take them."""
    command.add_argument("text", metavar="TEXT", help=f"the {what} ('-' reads it from stdin)")
    command.add_argument(
        "--chat-role",
        metavar="ROLE",
        help=f"send the {what} as one chat message from ROLE (e.g. user), through the chat "
        "template; without it the text is raw",
    )
    command.add_argument(
        "--edit",
        type=_edits,
        action="extend",
        default=[],
        metavar="EDIT",
        help=f"feature edit {GRAMMAR}, e.g. res12:1234=set:8 "
        "(repeatable, or comma-separated: res12:1=set:8,res12:9=ablate)",
    )


def _add_top_k(command: argparse.ArgumentParser, help: str) -> None:
    command.add_argument(
        "--top-k",
        type=_integer("--top-k", _uint32_rule),
        default=0,
        metavar="K",
        help=help,
    )


def _add_inspect_options(inspect: argparse.ArgumentParser) -> None:
    _add_input_options(inspect, "text to read")
    inspect.add_argument(
        "--sae",
        action="append",
        default=[],
        metavar="S",
        help="report the top features of SAE S (repeatable; default: every SAE)",
    )
    _add_top_k(inspect, "top features per token and SAE (0: the server default, 8)")
    inspect.add_argument(
        "--feature",
        type=_feature_ref,
        action="append",
        default=[],
        metavar=REF_GRAMMAR,
        help="also report this feature at every token, e.g. res12:1234 (repeatable)",
    )


def _add_search_options(search: argparse.ArgumentParser) -> None:
    search.add_argument("query", metavar="QUERY", help="words to look for in feature labels")
    search.add_argument("--sae", default="", metavar="S", help="search SAE S only")
    search.add_argument(
        "--limit",
        type=_integer("--limit", _uint32_rule),
        default=0,
        metavar="N",
        help="most matches (0: the server default, 10)",
    )


def _add_contrast_options(contrast: argparse.ArgumentParser) -> None:
    for flag in ("--a", "--b"):
        contrast.add_argument(
            flag,
            type=_texts_file(flag),
            required=True,
            metavar="FILE",
            help=f"set {flag[2:]}: one text per line (blank lines skipped)",
        )
    contrast.add_argument("--sae", default="", metavar="S", help="rank SAE S's features only")
    _add_top_k(contrast, "features per direction (0: the server default, 8)")


def _add_generate_options(gen: argparse.ArgumentParser) -> None:
    _add_input_options(gen, "prompt")
    gen.add_argument(
        "--watch",
        type=_feature_ref,
        action="append",
        default=[],
        metavar=REF_GRAMMAR,
        help="report this feature's activation at every generated token, on stderr, e.g. "
        "res12:1234 (repeatable)",
    )
    gen.add_argument(
        "--rule",
        type=_rule,
        action="append",
        default=[],
        metavar="RULE",
        help=f"conditional steering {RULE_GRAMMAR}: the first time SAE:FEATURE's activation "
        "exceeds ABOVE, stop (finish reason 'condition') or apply the edits from the next "
        "position on, e.g. 'res12:5>2.5 -> stop' or 'res12:5>2.5 -> res12:9=set:4' (repeatable)",
    )
    gen.add_argument(
        "--preset",
        default="",
        metavar="NAME",
        help="apply the server's edit set NAME (see `describe`); --edit wins on the same feature",
    )
    gen.add_argument(
        "--compare",
        action="store_true",
        help="run the request unsteered and steered (same seed) and print both side by side; "
        "needs --edit, --rule or --preset",
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
    _add_top_k(gen, "0: no top-k cut (default)")
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
