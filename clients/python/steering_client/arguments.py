"""The command line of `steering-client`: its commands and options, and the checks that turn each
flag's text into a value (an edit, a rule, a number in range) or one line naming the flag.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from typing import NoReturn, TypeVar

from steering_client.client import DEFAULT_TARGET, SteeringClient
from steering_client.edits import (
    GRAMMAR,
    REF_GRAMMAR,
    Edit,
    FeatureRef,
    parse_edits,
    parse_feature_ref,
)
from steering_client.rules import RULE_GRAMMAR, Rule, parse_rule

PROG = "steering-client"
Runner = Callable[[SteeringClient, argparse.Namespace], int]  # a command: its exit code


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage error is one line and a hint, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\nhint: see '{self.prog} --help'\n")


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


def build_parser(run: Mapping[str, Runner]) -> argparse.ArgumentParser:
    """The parser; each command's `run` is set as its `args.run`."""
    parser = Parser(prog=PROG, description="Client of the steering server (gRPC).")
    parser.set_defaults(command_parser=parser)
    _add_global_options(parser, for_command=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = _add_command(
        commands, "generate", run["generate"], "stream a steered completion to stdout"
    )
    _add_generate_options(gen)
    _add_command(commands, "describe", run["describe"], "print the model, SAEs, presets and limits")
    inspect = _add_command(
        commands, "inspect", run["inspect"], "print what the SAEs read at every token of a text"
    )
    _add_inspect_options(inspect)
    search = _add_command(commands, "search", run["search"], "find features by their labels")
    _add_search_options(search)
    contrast = _add_command(
        commands,
        "contrast",
        run["contrast"],
        "print the features that most separate two sets of texts",
    )
    _add_contrast_options(contrast)
    feature = _add_command(
        commands,
        "feature",
        run["feature"],
        "print a feature's card: label, typical maximum, contexts, promoted and suppressed tokens",
    )
    _add_feature_options(feature)
    score = _add_command(
        commands,
        "score",
        run["score"],
        "print each continuation token's log-probability and the features' activations",
    )
    _add_score_options(score)
    sweep = _add_command(
        commands,
        "sweep",
        run["sweep"],
        "generate at several strengths of one feature's edit, score them, recommend one",
    )
    _add_sweep_options(sweep)
    return parser


def _add_score_options(score: argparse.ArgumentParser) -> None:
    score.add_argument("prompt", metavar="PROMPT", help="the context (tokenized with BOS)")
    score.add_argument(
        "continuation", metavar="CONTINUATION", help="the text scored, appended to the prompt"
    )
    score.add_argument(
        "--feature",
        type=_feature_ref,
        action="append",
        default=[],
        metavar=REF_GRAMMAR,
        help="report this feature's activation at every continuation token (repeatable)",
    )
    score.add_argument(
        "--edit",
        type=_edits,
        action="extend",
        default=[],
        metavar=GRAMMAR,
        help="steer while reading (repeatable; comma-separated lists too)",
    )


def _add_sweep_options(sweep: argparse.ArgumentParser) -> None:
    sweep.add_argument("feature", type=_feature_ref, metavar=REF_GRAMMAR, help="the feature")
    sweep.add_argument(
        "--prompts",
        nargs="+",
        required=True,
        metavar="PROMPT",
        help="the prompts (1 to the server's max_sweep_prompts, 8 by default)",
    )
    sweep.add_argument(
        "--strengths",
        type=_strengths,
        default=[],
        metavar="S,S,...",
        help="comma-separated strengths, multiples of the feature's typical maximum where it has "
        "one (default: 0,0.25,0.5,1,2,4,8; 0, the unsteered baseline, is always measured)",
    )
    sweep.add_argument(
        "--mode", choices=("set", "add", "scale"), default="set", help="the edit's mode (set)"
    )
    sweep.add_argument(
        "--max-new-tokens",
        type=_integer("--max-new-tokens", _uint32_rule),
        default=0,
        metavar="N",
        help="tokens per generation, greedy (0: the server default)",
    )
    sweep.add_argument(
        "--only-when-active",
        action="store_true",
        help="apply the edit only where the feature fires",
    )


def _strengths(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers joined by commas, got {text!r}"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"strengths must be finite, got {text!r}")
    return values


def _add_command(
    commands: argparse._SubParsersAction[Parser],
    name: str,
    run: Runner,
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
        "--no-top",
        action="store_true",
        help="report no top features, only --feature ones (the server skips the full encode)",
    )
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
    search.add_argument(
        "--by",
        choices=("labels", "activation", "both"),
        default="labels",
        help="labels: the query's words against the labels; activation: the model reads the "
        "query (features by mean activation relative to their typical maximum); both: merged",
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


def _add_feature_options(feature: argparse.ArgumentParser) -> None:
    feature.add_argument(
        "feature", type=_feature_ref, metavar=REF_GRAMMAR, help="the feature, e.g. res12:1234"
    )
    feature.add_argument(
        "--top-tokens",
        type=_integer("--top-tokens", _uint32_rule),
        default=0,
        metavar="N",
        help="promoted and suppressed tokens listed, each (0: the server default, 10)",
    )


def _add_generate_options(gen: argparse.ArgumentParser) -> None:
    _add_input_options(gen, "prompt")
    gen.add_argument(
        "--watch",
        type=_feature_ref,
        action="append",
        default=[],
        metavar=REF_GRAMMAR,
        help="report this feature's activation at every generated token, on stderr, e.g. "
        "res12:1234 (repeatable); read before the feature's own edit, so a feature the "
        "request edits shows what the model computed there, not the value the edit wrote",
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
    gen.add_argument(
        "--top-logprobs",
        type=_integer("--top-logprobs", _uint32_rule),
        metavar="N",
        help="print each token's log-probability and its N most likely alternatives",
    )
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument(
        "--ignore-eos", action="store_true", help="keep generating past end-of-sequence"
    )
    gen.add_argument("--request-id", default="", help="id echoed in the server's logs")
