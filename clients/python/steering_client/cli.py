"""`steering-client`: generate steered text, describe the server, find features (inspect,
search, contrast, feature cards), and judge a dose (score a text, sweep a feature's strengths),
from a shell.

Generated text streams to stdout as it arrives; the watched features' table (with a note when a
watched feature is also edited: its value is read before that edit), the edits' receipts and the
finish reason, usage and seed go to stderr, so stdout holds only the completion.
`generate --compare` prints the unsteered and the steered completion side by side (or, on a
terminal narrower than 100 columns, as interleaved labelled lines) once both have finished. A failed
call exits 1 with the gRPC status name and message; a bad argument exits 2 with one line naming
its flag and one line of hint. The connection options (--target, --token, --tls, --ca-cert,
--timeout, --wait) go before or after the subcommand; given twice, the later one wins.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc

from steering_client.arguments import Parser, build_parser
from steering_client.client import SteeringClient
from steering_client.dose import format_score, format_sweep
from steering_client.edits import Edit
from steering_client.errors import SteeringClientError
from steering_client.render import (
    COMPARED,
    format_card,
    format_comparison,
    format_contrast,
    format_description,
    format_inspected,
    format_logprobs,
    format_matches,
    format_watch_note,
    format_watched,
    format_watched_completion,
)
from steering_client.request import ChatMessage
from steering_client.responses import Chunk, Comparison, Completion, EditReceipt

EXIT_RPC_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away
# --wait: how often to ask a server that is not serving yet, and the most the channel waits
# between two tries to connect (gRPC's default backoff grows to 2 minutes).
WAIT_POLL_S = 0.25
WAIT_RECONNECT_MS = 1000


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(COMMANDS).parse_args(argv)
    usage: Parser = args.command_parser  # the errors below are the command's
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
        _print_watch_note(args, chunks[-1].receipts if chunks else ())
    if args.top_logprobs is not None:
        print(format_logprobs(chunks), file=sys.stderr)
    if chunks:
        last = chunks[-1]
        for receipt in last.receipts:
            print(receipt, file=sys.stderr)
        print(_summary(last), file=sys.stderr)
    return 0


def _generate_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments `generate` and `compare` share, from the command line."""
    names = (
        "max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop", "ignore_eos",
        "top_logprobs",
    )  # fmt: skip
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
        _print_watch_note(args, comparison.steered.receipts)
    for receipt in comparison.steered.receipts:
        print(receipt, file=sys.stderr)
    for name, run in runs.items():
        print(f"{name}: {_summary(run, seed=False)}", file=sys.stderr)
    print(_pair_seed(comparison, args.temperature), file=sys.stderr)
    return 0


def _print_watch_note(args: argparse.Namespace, receipts: Sequence[EditReceipt]) -> None:
    """Say what a watched value is when the request edits that feature too (by --edit, a
    rule's edits, or the preset's, which the receipts name)."""
    edits: list[Edit] = [*args.edit, *(e for rule in args.rule for e in rule.apply)]
    note = format_watch_note(args.watch, [*edits, *(r.edit for r in receipts)])
    if note:
        print(note, file=sys.stderr)


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
        no_top=args.no_top,
    )
    print(format_inspected(tokens))
    return 0


def _search(client: SteeringClient, args: argparse.Namespace) -> int:
    matches = client.search(args.query, sae=args.sae, limit=args.limit, by=args.by)
    if matches:
        print(format_matches(matches))
    else:
        print("no matches", file=sys.stderr)
    return 0


def _contrast(client: SteeringClient, args: argparse.Namespace) -> int:
    print(format_contrast(client.contrast(args.a, args.b, sae=args.sae, top_k=args.top_k)))
    return 0


def _feature(client: SteeringClient, args: argparse.Namespace) -> int:
    print(format_card(client.describe_feature(args.feature, top_tokens=args.top_tokens)))
    return 0


def _score(client: SteeringClient, args: argparse.Namespace) -> int:
    scored = client.score(args.prompt, args.continuation, edits=args.edit, features=args.feature)
    print(format_score(scored, args.feature))
    return 0


def _sweep(client: SteeringClient, args: argparse.Namespace) -> int:
    swept = client.sweep(
        args.feature,
        args.prompts,
        mode=args.mode,
        strengths=args.strengths,
        max_new_tokens=args.max_new_tokens,
        only_when_active=args.only_when_active,
    )
    print(format_sweep(swept))
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


COMMANDS = {
    "generate": _generate,
    "describe": _describe,
    "inspect": _inspect,
    "search": _search,
    "contrast": _contrast,
    "feature": _feature,
    "score": _score,
    "sweep": _sweep,
}
