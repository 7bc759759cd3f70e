"""Sync and async clients of the steering server: stream a steered generation, compare it with
the unsteered one, describe the model, inspect what the SAEs read, search feature labels,
contrast two sets of texts.

Both speak the same API over one gRPC channel each; a failed call raises `SteeringClientError`.
They hold no state beyond the channel, so one client may serve many threads (sync) or tasks
(async, on one event loop). Requests are built in `request` and answers read in `responses` and
`discovery`; the classes here only make the calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from types import TracebackType
from typing import TypeVar

import grpc
import grpc.aio

from steering_client.discovery import (
    Contrast,
    FeatureMatch,
    InspectedToken,
    feature_matches,
    inspected_tokens,
)
from steering_client.errors import SteeringClientError
from steering_client.request import (
    ChatMessage,
    EditLike,
    FeatureLike,
    RuleLike,
    auth_metadata,
    build_comparison_requests,
    build_contrast_request,
    build_generate_request,
    build_inspect_request,
    build_search_request,
    comparison_seed,
    sampling_params,
)
from steering_client.responses import Chunk, Comparison, Completion, ModelDescription
from steering_proto.v1 import steering_pb2 as pb
from steering_proto.v1 import steering_pb2_grpc as pb_grpc

DEFAULT_TARGET = "localhost:50051"

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def _generate_request(
    prompt: str | None,
    chat: Sequence[ChatMessage] | None,
    *,
    edits: Iterable[EditLike],
    rules: Iterable[RuleLike],
    preset: str,
    watch: Iterable[FeatureLike],
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    stop: Iterable[str],
    ignore_eos: bool,
    request_id: str,
) -> pb.GenerateRequest:
    """The GenerateRequest of `generate`'s arguments (both clients')."""
    sampling = sampling_params(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop,
        ignore_eos=ignore_eos,
    )
    return build_generate_request(
        prompt, chat, edits, sampling, request_id, watch, rules=rules, preset=preset
    )


def _credentials(root_certificates: bytes | None, tls: bool) -> grpc.ChannelCredentials | None:
    """TLS credentials when asked for (system roots unless `root_certificates` are given)."""
    if root_certificates is None and not tls:
        return None
    return grpc.ssl_channel_credentials(root_certificates)


class SteeringClient:
    """Blocking client. `target` is "host:port"; `token` is sent as `authorization: Bearer ...`.

    TLS is used when `tls` is true or `root_certificates` (PEM bytes) are given. `timeout` is the
    default deadline of each call, in seconds (None: no deadline). Close it, or use `with`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
        timeout: float | None = None,
    ) -> None:
        creds = _credentials(root_certificates, tls)
        self._channel = (
            grpc.insecure_channel(target) if creds is None else grpc.secure_channel(target, creds)
        )
        self._stub = pb_grpc.SteeringServiceStub(self._channel)
        self._metadata = auth_metadata(token)
        self._timeout = timeout

    def generate(
        self,
        prompt: str | None = None,
        *,
        chat: Sequence[ChatMessage] | None = None,
        edits: Iterable[EditLike] = (),
        rules: Iterable[RuleLike] = (),
        preset: str = "",
        watch: Iterable[FeatureLike] = (),
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: Iterable[str] = (),
        ignore_eos: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Iterator[Chunk]:
        """Stream the chunks of one generation; the call starts when iteration does.

        Give exactly one of `prompt` (raw text) or `chat` ((role, content) pairs or dicts,
        rendered with the chat template). Zeros mean defaults: temperature 0 is greedy,
        max_new_tokens 0 the server's default, top_k 0 and top_p 0 no cut; seed None lets the
        server pick one (reported on the last chunk). `watch` names features (`FeatureRef`s or
        (sae, feature) pairs) whose activations each chunk reports per token in `watched`; the
        last chunk carries one receipt per edit in effect (the preset's, the request's, and the
        rules' once fired). `rules` (`Rule`s) steer conditionally: each fires once, the first
        time its feature is above its threshold, and applies its edits from the next position
        on or stops the request (finish reason "condition"). `preset` names one of the server's
        edit sets (`describe().presets`); the request's own edits win where both edit one
        feature. Leaving the loop early cancels the call. Raises ValueError for a malformed
        request, SteeringClientError when the call fails.
        """
        request = _generate_request(
            prompt,
            chat,
            edits=edits,
            rules=rules,
            preset=preset,
            watch=watch,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            ignore_eos=ignore_eos,
            request_id=request_id,
        )
        return self._stream(request, self._timeout if timeout is None else timeout)

    def generate_text(
        self,
        prompt: str | None = None,
        *,
        chat: Sequence[ChatMessage] | None = None,
        edits: Iterable[EditLike] = (),
        rules: Iterable[RuleLike] = (),
        preset: str = "",
        watch: Iterable[FeatureLike] = (),
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: Iterable[str] = (),
        ignore_eos: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> str:
        """The whole text of `generate(...)` (same arguments), once generation has finished."""
        chunks = self.generate(
            prompt,
            chat=chat,
            edits=edits,
            rules=rules,
            preset=preset,
            watch=watch,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            ignore_eos=ignore_eos,
            request_id=request_id,
            timeout=timeout,
        )
        return "".join(chunk.text for chunk in chunks)

    def compare(
        self,
        prompt: str | None = None,
        *,
        chat: Sequence[ChatMessage] | None = None,
        edits: Iterable[EditLike] = (),
        rules: Iterable[RuleLike] = (),
        preset: str = "",
        watch: Iterable[FeatureLike] = (),
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: Iterable[str] = (),
        ignore_eos: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Comparison:
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
        request = _generate_request(
            prompt,
            chat,
            edits=edits,
            rules=rules,
            preset=preset,
            watch=watch,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=comparison_seed(seed, temperature),
            stop=stop,
            ignore_eos=ignore_eos,
            request_id=request_id,
        )
        pair = build_comparison_requests(request)
        deadline = self._timeout if timeout is None else timeout
        calls = [self._stub.Generate(r, timeout=deadline, metadata=self._metadata) for r in pair]
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="steering-compare") as pool:
            runs = [pool.submit(_complete, call) for call in calls]
            try:
                wait(runs, return_when=FIRST_EXCEPTION)
                for run in runs:
                    if run.done() and run.exception() is not None:
                        run.result()  # raises the first failure; the finally cancels the other
                unsteered, steered = (run.result() for run in runs)
            finally:
                for call in calls:
                    call.cancel()  # a no-op on a finished call; ends one still streaming
        return Comparison(unsteered, steered)

    def describe(self, *, timeout: float | None = None) -> ModelDescription:
        """The served model, its SAEs, the server's limits and its presets."""
        response = self._unary(self._stub.DescribeModel, pb.DescribeModelRequest(), timeout)
        return ModelDescription.from_proto(response)

    def inspect(
        self,
        prompt: str | None = None,
        *,
        chat: Sequence[ChatMessage] | None = None,
        saes: Iterable[str] = (),
        top_k: int = 0,
        features: Iterable[FeatureLike] = (),
        edits: Iterable[EditLike] = (),
        timeout: float | None = None,
    ) -> tuple[InspectedToken, ...]:
        """Read a prompt or chat through the model and report what the SAEs read at every token.

        Each token carries the `top_k` most active features of each SAE in `saes` (empty: all;
        top_k 0: the server's default, 8) and the activations of `features`, in their order.
        `edits` steer the model while it reads. Raises ValueError for a malformed request,
        SteeringClientError when the call fails.
        """
        request = build_inspect_request(
            prompt, chat, saes=saes, top_k=top_k, features=features, edits=edits
        )
        return inspected_tokens(self._unary(self._stub.Inspect, request, timeout))

    def search(
        self, query: str, *, sae: str = "", limit: int = 0, timeout: float | None = None
    ) -> tuple[FeatureMatch, ...]:
        """Features whose labels match `query`, best first (sae "": every SAE; limit 0: 10)."""
        request = build_search_request(query, sae=sae, limit=limit)
        return feature_matches(self._unary(self._stub.SearchFeatures, request, timeout))

    def contrast(
        self,
        a: Iterable[str],
        b: Iterable[str],
        *,
        sae: str = "",
        top_k: int = 0,
        timeout: float | None = None,
    ) -> Contrast:
        """The `top_k` features (0: 8) that most separate texts `a` from texts `b`, each way.

        `sae` "" ranks every SAE's features together.
        """
        request = build_contrast_request(a, b, sae=sae, top_k=top_k)
        return Contrast.from_proto(self._unary(self._stub.Contrast, request, timeout))

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

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
    ) -> _Response:
        try:
            return method(
                request,
                timeout=self._timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise SteeringClientError.from_rpc_error(error) from error

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


class AsyncSteeringClient:
    """The asyncio twin of `SteeringClient` (grpc.aio): same arguments, same results.

    `async for chunk in client.generate(...)`, `await client.generate_text(...)`,
    `await client.compare(...)`, `await client.describe()`, `await client.inspect(...)` (and
    `search`, `contrast`). Create it inside the event loop that uses it; close it with
    `await client.close()` or `async with`.
    To stop a stream early and cancel the call at once, wrap it in `contextlib.aclosing`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
        timeout: float | None = None,
    ) -> None:
        creds = _credentials(root_certificates, tls)
        self._channel = (
            grpc.aio.insecure_channel(target)
            if creds is None
            else grpc.aio.secure_channel(target, creds)
        )
        self._stub = pb_grpc.SteeringServiceStub(self._channel)
        self._metadata = auth_metadata(token)
        self._timeout = timeout

    def generate(
        self,
        prompt: str | None = None,
        *,
        chat: Sequence[ChatMessage] | None = None,
        edits: Iterable[EditLike] = (),
        rules: Iterable[RuleLike] = (),
        preset: str = "",
        watch: Iterable[FeatureLike] = (),
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: Iterable[str] = (),
        ignore_eos: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[Chunk]:
        """Stream the chunks of one generation (see `SteeringClient.generate`)."""
        request = _generate_request(
            prompt,
            chat,
            edits=edits,
            rules=rules,
            preset=preset,
            watch=watch,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            ignore_eos=ignore_eos,
            request_id=request_id,
        )
        return self._stream(request, self._timeout if timeout is None else timeout)

    async def generate_text(
        self,
        prompt: str | None = None,
        *,
        chat: Sequence[ChatMessage] | None = None,
        edits: Iterable[EditLike] = (),
        rules: Iterable[RuleLike] = (),
        preset: str = "",
        watch: Iterable[FeatureLike] = (),
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: Iterable[str] = (),
        ignore_eos: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> str:
        """The whole text of `generate(...)` (same arguments), once generation has finished."""
        chunks = self.generate(
            prompt,
            chat=chat,
            edits=edits,
            rules=rules,
            preset=preset,
            watch=watch,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            ignore_eos=ignore_eos,
            request_id=request_id,
            timeout=timeout,
        )
        return "".join([chunk.text async for chunk in chunks])

    async def compare(
        self,
        prompt: str | None = None,
        *,
        chat: Sequence[ChatMessage] | None = None,
        edits: Iterable[EditLike] = (),
        rules: Iterable[RuleLike] = (),
        preset: str = "",
        watch: Iterable[FeatureLike] = (),
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: Iterable[str] = (),
        ignore_eos: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Comparison:
        """The request unsteered and steered, run concurrently with one seed (see
        `SteeringClient.compare`: greedy (temperature 0) output is the same whatever shares its
        batch, so greedy pairs are exact; with a seed, sampled pairs are a fair comparison)."""
        request = _generate_request(
            prompt,
            chat,
            edits=edits,
            rules=rules,
            preset=preset,
            watch=watch,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=comparison_seed(seed, temperature),
            stop=stop,
            ignore_eos=ignore_eos,
            request_id=request_id,
        )
        pair = build_comparison_requests(request)
        deadline = self._timeout if timeout is None else timeout
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
        request = pb.DescribeModelRequest()
        response = await self._unary(self._stub.DescribeModel, request, timeout)
        return ModelDescription.from_proto(response)

    async def inspect(
        self,
        prompt: str | None = None,
        *,
        chat: Sequence[ChatMessage] | None = None,
        saes: Iterable[str] = (),
        top_k: int = 0,
        features: Iterable[FeatureLike] = (),
        edits: Iterable[EditLike] = (),
        timeout: float | None = None,
    ) -> tuple[InspectedToken, ...]:
        """What the SAEs read at every token (see `SteeringClient.inspect`)."""
        request = build_inspect_request(
            prompt, chat, saes=saes, top_k=top_k, features=features, edits=edits
        )
        return inspected_tokens(await self._unary(self._stub.Inspect, request, timeout))

    async def search(
        self, query: str, *, sae: str = "", limit: int = 0, timeout: float | None = None
    ) -> tuple[FeatureMatch, ...]:
        """Features whose labels match `query`, best first (see `SteeringClient.search`)."""
        request = build_search_request(query, sae=sae, limit=limit)
        return feature_matches(await self._unary(self._stub.SearchFeatures, request, timeout))

    async def contrast(
        self,
        a: Iterable[str],
        b: Iterable[str],
        *,
        sae: str = "",
        top_k: int = 0,
        timeout: float | None = None,
    ) -> Contrast:
        """The features that most separate `a` from `b` (see `SteeringClient.contrast`)."""
        request = build_contrast_request(a, b, sae=sae, top_k=top_k)
        return Contrast.from_proto(await self._unary(self._stub.Contrast, request, timeout))

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

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
    ) -> _Response:
        try:
            return await method(
                request,
                timeout=self._timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise SteeringClientError.from_rpc_error(error) from error

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
