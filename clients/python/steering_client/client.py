"""Sync and async clients of the steering server: stream a steered generation, compare it with
the unsteered one, describe the model, inspect what the SAEs read, search feature labels,
contrast two sets of texts, describe one feature.

Both speak the same API over one gRPC channel each; a failed call raises `SteeringClientError`.
They hold no state beyond the channel, so one client may serve many threads (sync) or tasks
(async, on one event loop). Each call is built once in `calls` (its request and how its answer
is read); the classes here only run them, one blocking and one on asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from typing_extensions import Unpack

from steering_client import calls
from steering_client.calls import (
    Answer,
    ContrastOptions,
    GenerateOptions,
    InspectOptions,
    ScoreOptions,
    SweepOptions,
    Unary,
)
from steering_client.discovery import Contrast, FeatureCard, FeatureMatch, InspectedToken
from steering_client.dose import Score, Sweep
from steering_client.errors import SteeringClientError
from steering_client.request import FeatureLike, auth_metadata, build_sweep_request
from steering_client.responses import Chunk, Comparison, Completion, ModelDescription
from steering_proto.v1 import steering_pb2 as pb
from steering_proto.v1 import steering_pb2_grpc as pb_grpc

DEFAULT_TARGET = "localhost:50051"


class _Client:
    """What both clients hold: a channel, its stub, the bearer token, the default deadline."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
        timeout: float | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        creds = None
        if root_certificates is not None or tls:  # system roots unless certificates are given
            creds = grpc.ssl_channel_credentials(root_certificates)
        self._channel = self._open(target, creds, list(options))
        self._stub = pb_grpc.SteeringServiceStub(self._channel)
        self._metadata = auth_metadata(token)
        self._timeout = timeout

    def _open(
        self, target: str, creds: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> Any:
        raise NotImplementedError

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    def _call(self, call: Unary[Answer]) -> Any:
        """Start a unary call; its response (sync) or an awaitable of it (asyncio)."""
        method = getattr(self._stub, call.method)
        return method(call.request, timeout=self._deadline(call.timeout), metadata=self._metadata)


class SteeringClient(_Client):
    """Blocking client. `target` is "host:port"; `token` is sent as `authorization: Bearer ...`.

    TLS is used when `tls` is true or `root_certificates` (PEM bytes) are given. `timeout` is the
    default deadline of each call, in seconds (None: no deadline). `options` are gRPC channel
    arguments, e.g. `[("grpc.max_reconnect_backoff_ms", 1000)]`. Close it, or use `with`.
    """

    def _open(
        self, target: str, creds: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> grpc.Channel:
        if creds is None:
            return grpc.insecure_channel(target, options)
        return grpc.secure_channel(target, creds, options)

    def generate(
        self, prompt: str | None = None, **options: Unpack[GenerateOptions]
    ) -> Iterator[Chunk]:
        """Stream the chunks of one generation; the call starts when iteration does.

        Give exactly one of `prompt` (raw text) or `chat` ((role, content) pairs or dicts,
        rendered with the chat template). Zeros mean defaults: temperature 0 is greedy,
        max_new_tokens 0 the server's default, top_k 0 and top_p 0 no cut; seed None lets the
        server pick one (reported on the last chunk). `watch` names features (`FeatureRef`s or
        (sae, feature) pairs) whose activations each chunk reports per token in `watched`, each
        read before the feature's own edit (a watched feature the request also edits shows what
        the model computed there, not the value the edit wrote: often 0 under set or add); the
        last chunk carries one receipt per edit in effect (the preset's, the request's, and the
        rules' once fired). `rules` (`Rule`s) steer conditionally: each fires once, the first
        time its feature is above its threshold, and applies its edits from the next position
        on or stops the request (finish reason "condition"). `preset` names one of the server's
        edit sets (`describe().presets`); the request's own edits win where both edit one
        feature. Leaving the loop early cancels the call. Raises ValueError for a malformed
        request, SteeringClientError when the call fails.
        """
        request = calls.generate_request(prompt, options)
        return self._stream(request, self._deadline(options.get("timeout")))

    def generate_text(self, prompt: str | None = None, **options: Unpack[GenerateOptions]) -> str:
        """The whole text of `generate(...)` (same arguments), once generation has finished."""
        return "".join(chunk.text for chunk in self.generate(prompt, **options))

    def compare(self, prompt: str | None = None, **options: Unpack[GenerateOptions]) -> Comparison:
        """Run one request twice, concurrently: unsteered (without its edits, rules and preset;
        what it watches is kept) and steered (as given), and return both completions.

        Both runs share one seed: `seed`, or, when it is None and `temperature` > 0, a random
        63-bit seed picked here (reported in each completion's `seed`). Greedy (temperature 0)
        output of a request is the same whatever shares its batch, so the two greedy runs are
        exact: any difference is the steering's. With a seed, a sampled pair draws the same
        random numbers: a fair comparison. A non-empty `request_id` is sent as "ID/unsteered"
        and "ID/steered". Arguments as for `generate`; at least one of `edits`, `rules` or
        `preset` must be given (else ValueError). When one run fails, the other is cancelled
        and the failure raised as SteeringClientError.
        """
        pair = calls.comparison(prompt, options)
        deadline = self._deadline(options.get("timeout"))
        streams = [self._stub.Generate(r, timeout=deadline, metadata=self._metadata) for r in pair]
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="steering-compare") as pool:
            runs = [pool.submit(_complete, stream) for stream in streams]
            try:
                wait(runs, return_when=FIRST_EXCEPTION)
                for run in runs:
                    if run.done() and run.exception() is not None:
                        run.result()  # raises the first failure; the finally cancels the other
                unsteered, steered = (run.result() for run in runs)
            finally:
                for stream in streams:
                    stream.cancel()  # a no-op on a finished call; ends one still streaming
        return Comparison(unsteered, steered)

    def describe(self, *, timeout: float | None = None) -> ModelDescription:
        """The served model, its SAEs, the server's limits and its presets."""
        return self._unary(calls.describe(timeout))

    def inspect(
        self, prompt: str | None = None, **options: Unpack[InspectOptions]
    ) -> tuple[InspectedToken, ...]:
        """Read a prompt or chat through the model and report what the SAEs read at every token.

        Each token carries the `top_k` most active features of each SAE in `saes` (empty: all;
        top_k 0: the server's default, 8) and the activations of `features`, in their order;
        `no_top=True` reports no top features (top_k must stay 0) and spares the server the
        full encode of its SAEs.
        `edits` steer the model while it reads. Raises ValueError for a malformed request,
        SteeringClientError when the call fails.
        """
        return self._unary(calls.inspect(prompt, **options))

    def search(
        self,
        query: str,
        *,
        sae: str = "",
        limit: int = 0,
        timeout: float | None = None,
        by: str = "labels",
    ) -> tuple[FeatureMatch, ...]:
        """Features whose labels match `query`, best first (sae "": every SAE; limit 0: 10).
        `by="activation"` lets the model read the query instead (features ranked by their mean
        activation relative to their typical maximum); `by="both"` merges, label hits first."""
        return self._unary(calls.search(query, sae, limit, timeout, by))

    def contrast(
        self, a: Iterable[str], b: Iterable[str], **options: Unpack[ContrastOptions]
    ) -> Contrast:
        """The `top_k` features (0: 8) that most separate texts `a` from texts `b`, each way.

        `sae` "" ranks every SAE's features together.
        """
        return self._unary(calls.contrast(a, b, **options))

    def describe_feature(
        self, feature: FeatureLike | str, *, top_tokens: int = 0, timeout: float | None = None
    ) -> FeatureCard:
        """One feature's card: label, typical maximum, frequency and top contexts (where the
        server's label file has them), and the `top_tokens` (0: 10) tokens its decoder direction
        promotes and suppresses most. `feature`: a `FeatureRef`, an (sae, feature) pair, or its
        `SAE:FEATURE` text."""
        return self._unary(calls.describe_feature(feature, top_tokens, timeout))

    def score(self, prompt: str, continuation: str, **options: Unpack[ScoreOptions]) -> Score:
        """Read `prompt` (with BOS) and `continuation` (its own tokens) as one text: per
        continuation token its log-probability and the `features`' activations (`edits` steer
        the reading; none: the unsteered model)."""
        return self._unary(calls.score(prompt, continuation, **options))

    def sweep(
        self, feature: FeatureLike | str, prompts: Iterable[str], **options: Unpack[SweepOptions]
    ) -> Sweep:
        """Generate greedily from every prompt at every strength of `feature`'s edit (one
        batch), score the outputs unsteered, and recommend a strength (see `SweepOptions`)."""
        calls.checked(options, SweepOptions)
        request = build_sweep_request(feature, prompts, **_sweep_args(options))
        stream = self._stub.Sweep(
            request, timeout=self._deadline(options.get("timeout")), metadata=self._metadata
        )
        try:
            return Sweep.from_protos(list(stream))
        except grpc.RpcError as error:
            raise SteeringClientError.from_rpc_error(error) from error

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SteeringClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _unary(self, call: Unary[Answer]) -> Answer:
        try:
            response = self._call(call)
        except grpc.RpcError as error:
            raise SteeringClientError.from_rpc_error(error) from error
        return call.read(response)

    def _stream(self, request: pb.GenerateRequest, timeout: float | None) -> Iterator[Chunk]:
        call = self._stub.Generate(request, timeout=timeout, metadata=self._metadata)
        try:
            yield from _chunks(call)
        finally:
            call.cancel()  # frees the server's batch row when the caller stops early; else a no-op


def _chunks(call: Iterator[pb.GenerateResponse]) -> Iterator[Chunk]:
    """The chunks of a Generate call, its failure raised as SteeringClientError."""
    try:
        for response in call:
            yield Chunk.from_proto(response)
    except grpc.RpcError as error:
        raise SteeringClientError.from_rpc_error(error) from error


def _complete(call: Iterator[pb.GenerateResponse]) -> Completion:
    """The whole completion of a Generate call (run in a thread of `compare`)."""
    return Completion.from_chunks(_chunks(call))


class AsyncSteeringClient(_Client):
    """The asyncio twin of `SteeringClient` (grpc.aio): same arguments, same results.

    `async for chunk in client.generate(...)`, `await client.generate_text(...)`,
    `await client.compare(...)`, `await client.describe()`, `await client.inspect(...)` (and
    `search`, `contrast`, `describe_feature`). Create it inside the event loop that uses it;
    close it with `await client.close()` or `async with`.
    To stop a stream early and cancel the call at once, wrap it in `contextlib.aclosing`.
    """

    def _open(
        self, target: str, creds: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> grpc.aio.Channel:
        if creds is None:
            return grpc.aio.insecure_channel(target, options)
        return grpc.aio.secure_channel(target, creds, options)

    def generate(
        self, prompt: str | None = None, **options: Unpack[GenerateOptions]
    ) -> AsyncIterator[Chunk]:
        """Stream the chunks of one generation (see `SteeringClient.generate`)."""
        request = calls.generate_request(prompt, options)
        return self._stream(request, self._deadline(options.get("timeout")))

    async def generate_text(
        self, prompt: str | None = None, **options: Unpack[GenerateOptions]
    ) -> str:
        """The whole text of `generate(...)` (same arguments), once generation has finished."""
        return "".join([chunk.text async for chunk in self.generate(prompt, **options)])

    async def compare(
        self, prompt: str | None = None, **options: Unpack[GenerateOptions]
    ) -> Comparison:
        """The request unsteered and steered, run concurrently with one seed (see
        `SteeringClient.compare`: greedy (temperature 0) output is the same whatever shares its
        batch, so greedy pairs are exact; with a seed, sampled pairs are a fair comparison)."""
        pair = calls.comparison(prompt, options)
        deadline = self._deadline(options.get("timeout"))
        runs = [asyncio.ensure_future(self._complete(r, deadline)) for r in pair]
        try:
            unsteered, steered = await asyncio.gather(*runs)
        except BaseException:
            for run in runs:
                run.cancel()  # cancelling a run cancels its call
            await asyncio.gather(*runs, return_exceptions=True)
            raise
        return Comparison(unsteered, steered)

    async def describe(self, *, timeout: float | None = None) -> ModelDescription:
        """The served model, its SAEs, the server's limits and its presets."""
        return await self._unary(calls.describe(timeout))

    async def inspect(
        self, prompt: str | None = None, **options: Unpack[InspectOptions]
    ) -> tuple[InspectedToken, ...]:
        """What the SAEs read at every token (see `SteeringClient.inspect`)."""
        return await self._unary(calls.inspect(prompt, **options))

    async def search(
        self,
        query: str,
        *,
        sae: str = "",
        limit: int = 0,
        timeout: float | None = None,
        by: str = "labels",
    ) -> tuple[FeatureMatch, ...]:
        """Features matching `query`, best first (see `SteeringClient.search`)."""
        return await self._unary(calls.search(query, sae, limit, timeout, by))

    async def contrast(
        self, a: Iterable[str], b: Iterable[str], **options: Unpack[ContrastOptions]
    ) -> Contrast:
        """The features that most separate `a` from `b` (see `SteeringClient.contrast`)."""
        return await self._unary(calls.contrast(a, b, **options))

    async def describe_feature(
        self, feature: FeatureLike | str, *, top_tokens: int = 0, timeout: float | None = None
    ) -> FeatureCard:
        """One feature's card (see `SteeringClient.describe_feature`)."""
        return await self._unary(calls.describe_feature(feature, top_tokens, timeout))

    async def score(self, prompt: str, continuation: str, **options: Unpack[ScoreOptions]) -> Score:
        """Per continuation token its log-probability and activations (see
        `SteeringClient.score`)."""
        return await self._unary(calls.score(prompt, continuation, **options))

    async def sweep(
        self, feature: FeatureLike | str, prompts: Iterable[str], **options: Unpack[SweepOptions]
    ) -> Sweep:
        """One feature's edit over strengths and prompts (see `SteeringClient.sweep`)."""
        calls.checked(options, SweepOptions)
        request = build_sweep_request(feature, prompts, **_sweep_args(options))
        stream = self._stub.Sweep(
            request, timeout=self._deadline(options.get("timeout")), metadata=self._metadata
        )
        try:
            return Sweep.from_protos([point async for point in stream])
        except grpc.RpcError as error:
            raise SteeringClientError.from_rpc_error(error) from error

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncSteeringClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _unary(self, call: Unary[Answer]) -> Answer:
        try:
            response = await self._call(call)
        except grpc.RpcError as error:
            raise SteeringClientError.from_rpc_error(error) from error
        return call.read(response)

    async def _stream(
        self, request: pb.GenerateRequest, timeout: float | None
    ) -> AsyncIterator[Chunk]:
        call = self._stub.Generate(request, timeout=timeout, metadata=self._metadata)
        try:
            async for response in call:
                yield Chunk.from_proto(response)
        except grpc.RpcError as error:
            raise SteeringClientError.from_rpc_error(error) from error
        finally:
            call.cancel()  # frees the server's batch row when the caller stops early; else a no-op

    async def _complete(self, request: pb.GenerateRequest, timeout: float | None) -> Completion:
        """The whole completion of one generation (a run of `compare`)."""
        return Completion.from_chunks([chunk async for chunk in self._stream(request, timeout)])


def _sweep_args(options: SweepOptions) -> dict[str, Any]:
    """`build_sweep_request`'s keyword arguments of a sweep's options (the timeout aside)."""
    return {k: v for k, v in options.items() if k != "timeout"}
