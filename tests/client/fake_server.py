"""An in-process fake of the steering server: canned answers, recorded requests, scripted failures.

It checks nothing about steering; it lets client tests see exactly what went over the wire.
Generate echoes what a request watches and edits: token k's watched features read
`watched_value(token_id, j)`, and the last chunk holds one receipt per edit in effect (see
`edits_in_effect` and `receipt_counts`): its preset's, its own, and its rules' (every `apply` rule
counts as fired). A preset the description does not list is INVALID_ARGUMENT naming `preset`. On
request, a request with a stop rule ends early with FINISH_REASON_CONDITION, a steered request
(edits, rules or a preset) streams other chunks, and calls wait for each other at a barrier.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc
from google.protobuf.message import Message

from steering_proto.v1 import steering_pb2 as pb
from steering_proto.v1 import steering_pb2_grpc as pb_grpc

CANNED = (
    pb.GenerateResponse(token_ids=[10, 11], text="Hello"),
    pb.GenerateResponse(token_ids=[12], text=", world"),
    pb.GenerateResponse(
        token_ids=[13],
        text="!",
        finish_reason=pb.FINISH_REASON_LENGTH,
        usage=pb.Usage(prompt_tokens=3, completion_tokens=4),
        seed=1234,
    ),
)

RES2_SHA256 = "0123456789abcdef" * 4
VEC_SHA256 = "fedcba9876543210" * 4
CALM = pb.Preset(
    name="calm",
    description="calm sea",
    edits=[
        pb.FeatureEdit(sae="res2", feature=7, mode=pb.EDIT_MODE_SET, value=8.0),
        pb.FeatureEdit(sae="res2", feature=3, mode=pb.EDIT_MODE_ABLATE, only_when_active=True),
    ],
)
BARE = pb.Preset(name="bare", edits=[pb.FeatureEdit(sae="vec", feature=1, mode=pb.EDIT_MODE_ADD)])

DESCRIPTION = pb.DescribeModelResponse(
    model=pb.ModelInfo(
        name="tiny-gemma", num_layers=6, d_model=64, vocab_size=512, context_length=8192, chat=True
    ),
    saes=[
        pb.SaeInfo(
            name="res2",
            layer=2,
            d_sae=256,
            d_model=64,
            site="resid_post",
            labels=200,
            kind="jumprelu",
            sha256=RES2_SHA256,
        ),
        pb.SaeInfo(
            name="vec",
            layer=3,
            d_sae=4,
            d_model=64,
            site="resid_post",
            kind="vector",
            sha256=VEC_SHA256,
        ),
    ],
    presets=[CALM, BARE],
    limits=pb.Limits(
        max_prompt_tokens=2048,
        max_new_tokens=1024,
        default_max_new_tokens=64,
        max_edits_per_request=32,
        max_abs_edit_value=1e4,
        max_active_rows=16,
        max_queued_requests=1_000_000,
        max_stop_strings=8,
        max_stop_string_chars=64,
        max_top_k=64,
        max_inspect_features=16,
        max_watched_features=8,
        max_contrast_texts=256,
        max_search_results=100,
        max_rules_per_request=8,
    ),
)

INSPECTED = pb.InspectResponse(
    tokens=[
        pb.InspectedToken(
            token_id=2,
            text="<bos>",
            special=True,
            features=[pb.FeatureActivation(sae="res2", feature=7, activation=0.0)],
        ),
        pb.InspectedToken(
            token_id=651,
            text="The",
            top=[
                pb.FeatureActivation(sae="res2", feature=12, activation=3.5, label="articles"),
                pb.FeatureActivation(sae="res2", feature=7, activation=1.25),
            ],
            features=[pb.FeatureActivation(sae="res2", feature=7, activation=1.25)],
        ),
        pb.InspectedToken(
            token_id=9001,
            text=" sea\n",
            top=[pb.FeatureActivation(sae="res2", feature=7, activation=8.5, label="the sea")],
            features=[pb.FeatureActivation(sae="res2", feature=7, activation=8.5, label="the sea")],
        ),
    ]
)

MATCHES = pb.SearchFeaturesResponse(
    matches=[
        pb.FeatureMatch(
            sae="res2", feature=7, label="the sea", score=2.5, typical_max=12.5, frequency=0.125
        ),
        pb.FeatureMatch(sae="res2", feature=130, label="sea creatures", score=1.25),
    ]
)

CONTRASTED = pb.ContrastResponse(
    toward_a=[
        pb.FeatureContrast(sae="res2", feature=7, mean_a=4.5, mean_b=0.25, label="the sea"),
        pb.FeatureContrast(sae="res2", feature=40, mean_a=1.5, mean_b=0.5),
    ],
    toward_b=[
        pb.FeatureContrast(sae="res2", feature=99, mean_a=0.0, mean_b=2.75, label="deserts"),
    ],
)

CARD = pb.FeatureCard(
    sae="res2",
    feature=7,
    label="the sea",
    typical_max=12.5,
    frequency=0.125,
    top_contexts=["by the [[sea]] at dawn", "a [[sea]]\nbreeze"],
    promoted=[
        pb.TokenWeight(token_id=9001, text=" sea", weight=0.5),
        pb.TokenWeight(token_id=12, text=" ocean", weight=0.25),
    ],
    suppressed=[pb.TokenWeight(token_id=40, text=" desert", weight=-0.75)],
)


def watched_value(token_id: int, j: int) -> float:
    """What the fake reports for the j-th watched feature at a token (exact in float32)."""
    return token_id + (j + 1) / 4


def receipt_counts(i: int) -> tuple[int, int]:
    """(applied_positions, active_positions) the fake reports for the request's i-th edit."""
    return 40 + i, i


def edits_in_effect(
    request: pb.GenerateRequest, description: pb.DescribeModelResponse = DESCRIPTION
) -> list[pb.FeatureEdit]:
    """The edits the fake receipts, in order: the preset's (less those the request's own edits
    replace), the request's, then every `apply` rule's."""
    own = {(edit.sae, edit.feature) for edit in request.edits}
    presets = {preset.name: preset for preset in description.presets}
    preset = presets.get(request.preset, pb.Preset())
    edits = [e for e in preset.edits if (e.sae, e.feature) not in own]
    edits.extend(request.edits)
    for rule in request.rules:
        if rule.WhichOneof("then") == "apply":
            edits.extend(rule.apply.edits)
    return edits


def steers(request: pb.GenerateRequest) -> bool:
    return bool(request.edits or request.rules or request.preset)


class FakeSteering(pb_grpc.SteeringServiceServicer):
    """Streams `chunks`; can demand a bearer token, abort up front or mid-stream, or hang."""

    def __init__(self) -> None:
        self.chunks: tuple[pb.GenerateResponse, ...] = CANNED
        # Streamed instead of `chunks` to a request with edits, rules or a preset, when set.
        self.steered_chunks: tuple[pb.GenerateResponse, ...] | None = None
        # A request holding a stop rule ends after this many chunks, its last message carrying
        # FINISH_REASON_CONDITION (as the server does when the rule fires), when set.
        self.stop_rule_fires_after: int | None = None
        # Every Generate call waits here before streaming (at most 5 s; then it fails ABORTED),
        # so calls that do not run together cannot pass it.
        self.barrier: threading.Barrier | None = None
        self.description: pb.DescribeModelResponse = DESCRIPTION
        self.token: str | None = None  # when set, calls must carry "Bearer <token>"
        self.abort: tuple[grpc.StatusCode, str] | None = None
        # This many calls (after the token check) fail UNAVAILABLE, as on a server still loading.
        self.loading_calls = 0
        self._loading_lock = threading.Lock()
        self.abort_after: int | None = None  # abort after this many chunks instead of up front
        self.hang_after: int | None = None  # stop sending after this many chunks, until cancelled
        self.inspected: pb.InspectResponse = INSPECTED
        self.matches: pb.SearchFeaturesResponse = MATCHES
        self.contrasted: pb.ContrastResponse = CONTRASTED
        self.card: pb.FeatureCard = CARD
        self.requests: list[Message] = []
        self.metadata: list[dict[str, str]] = []
        self.ended = threading.Event()  # a Generate call has terminated, for whatever reason

    def Generate(
        self, request: pb.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GenerateResponse]:
        context.add_callback(self.ended.set)
        self._admit(request, context, abort_now=self.abort_after is None)
        if request.preset and request.preset not in {p.name for p in self.description.presets}:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"preset: unknown {request.preset!r}")
        if self.barrier is not None:
            try:
                self.barrier.wait(timeout=5.0)
            except threading.BrokenBarrierError:
                context.abort(grpc.StatusCode.ABORTED, "the other call never came")
        chunks = self._chunks_for(request)
        for i, chunk in enumerate(chunks):
            if i == self.abort_after and self.abort:
                context.abort(*self.abort)
            if i == self.hang_after:
                self._hold(context)
                return
            yield self._echo(request, chunk, last=i == len(chunks) - 1)

    def DescribeModel(
        self, request: pb.DescribeModelRequest, context: grpc.ServicerContext
    ) -> pb.DescribeModelResponse:
        self._admit(request, context, abort_now=True)
        return self.description

    def Inspect(
        self, request: pb.InspectRequest, context: grpc.ServicerContext
    ) -> pb.InspectResponse:
        self._admit(request, context, abort_now=True)
        return self.inspected

    def SearchFeatures(
        self, request: pb.SearchFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.SearchFeaturesResponse:
        self._admit(request, context, abort_now=True)
        return self.matches

    def Contrast(
        self, request: pb.ContrastRequest, context: grpc.ServicerContext
    ) -> pb.ContrastResponse:
        self._admit(request, context, abort_now=True)
        return self.contrasted

    def DescribeFeature(
        self, request: pb.DescribeFeatureRequest, context: grpc.ServicerContext
    ) -> pb.FeatureCard:
        self._admit(request, context, abort_now=True)
        return self.card

    def _chunks_for(self, request: pb.GenerateRequest) -> tuple[pb.GenerateResponse, ...]:
        """What the request streams: the steered or plain chunks, cut short by a stop rule."""
        chunks = self.chunks
        if self.steered_chunks is not None and steers(request):
            chunks = self.steered_chunks
        fires = self.stop_rule_fires_after
        if fires is not None and any(rule.stop for rule in request.rules):
            last = pb.GenerateResponse(
                finish_reason=pb.FINISH_REASON_CONDITION,
                usage=pb.Usage(
                    prompt_tokens=3,
                    completion_tokens=sum(len(chunk.token_ids) for chunk in chunks[:fires]),
                ),
                seed=1234,
            )
            chunks = (*chunks[:fires], last)
        return chunks

    def _echo(
        self, request: pb.GenerateRequest, chunk: pb.GenerateResponse, *, last: bool
    ) -> pb.GenerateResponse:
        """The chunk with the request's watched features and, on the last, the receipts of the
        edits in effect."""
        effective = edits_in_effect(request, self.description) if last else []
        if not request.watch and not effective:
            return chunk
        echoed = pb.GenerateResponse()
        echoed.CopyFrom(chunk)
        for token_id in chunk.token_ids:
            values = [watched_value(token_id, j) for j in range(len(request.watch))]
            echoed.watched.add(activations=values)
        if last:
            for i, edit in enumerate(effective):
                applied, active = receipt_counts(i)
                echoed.receipts.add(edit=edit, applied_positions=applied, active_positions=active)
        return echoed

    def _admit(
        self,
        request: Message,
        context: grpc.ServicerContext,
        *,
        abort_now: bool,
    ) -> None:
        self.requests.append(request)
        metadata = {key: str(value) for key, value in context.invocation_metadata()}
        self.metadata.append(metadata)
        if self.token is not None and metadata.get("authorization") != f"Bearer {self.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        with self._loading_lock:
            loading = self.loading_calls > 0
            self.loading_calls -= loading
        if loading:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        if abort_now and self.abort:
            context.abort(*self.abort)

    @staticmethod
    def _hold(context: grpc.ServicerContext) -> None:
        """Wait (at most 10 s) until the call is cancelled, times out or the server stops."""
        give_up = time.monotonic() + 10.0
        while context.is_active() and time.monotonic() < give_up:
            time.sleep(0.005)


@contextmanager
def serve(servicer: FakeSteering, port: int = 0) -> Iterator[str]:
    """Serve `servicer` on loopback `port` (0: a free one); yields the target "127.0.0.1:PORT"."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SteeringServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
