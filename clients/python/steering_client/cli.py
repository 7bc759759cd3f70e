"""`steering-client`: generate steered text or describe the server, from a shell.

Text streams to stdout as it arrives; the finish reason, usage and seed go to stderr, so stdout
holds only the completion. A failed call exits 1 with the gRPC status name and message.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

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
        f"  layers {m.num_layers}, d_model {m.d_model}, vocab {m.vocab_size}",
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steering-client", description="Client of the steering server (gRPC)."
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("STEERING_TARGET", DEFAULT_TARGET),
        help="server address HOST:PORT (env STEERING_TARGET; default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("STEERING_TOKEN"),
        help="bearer token sent as 'authorization: Bearer T' (env STEERING_TOKEN)",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's roots")
    parser.add_argument("--ca-cert", metavar="FILE", help="use TLS with these PEM root certs")
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="deadline of the call in seconds"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = commands.add_parser("generate", help="stream a steered completion to stdout")
    gen.set_defaults(run=_generate)
    _add_generate_options(gen)
    describe = commands.add_parser("describe", help="print the model, SAEs and limits")
    describe.set_defaults(run=_describe)
    return parser


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
        "--max-new-tokens", type=int, default=0, help="0: the server default (default)"
    )
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    gen.add_argument("--top-k", type=int, default=0, help="0: no top-k cut (default)")
    gen.add_argument("--top-p", type=float, default=0.0, help="0 or 1: no nucleus cut")
    gen.add_argument("--seed", type=int, help="sampling seed (default: the server picks one)")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument(
        "--ignore-eos", action="store_true", help="keep generating past end-of-sequence"
    )
    gen.add_argument("--request-id", default="", help="id echoed in the server's logs")
