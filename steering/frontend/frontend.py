"""The transport-free front end: text requests in, text chunks out, over the engine's thread.

As vLLM's AsyncLLM over its EngineCore: it owns the engine thread and a tokenizing thread,
validates each request once, renders prompts and chats to token ids (exactly one BOS), streams
incremental text with stop strings, and raises domain errors. Leaving a stream early aborts the
request's row at once. Knows nothing of gRPC or Prometheus: stats leave through a callback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from steering.discovery import results as discovery
from steering.discovery.cards import FeatureCard, TokenEffects, TokenWeight, token_effects
from steering.discovery.catalog import Catalog, FeatureMatch
from steering.discovery.results import FeatureContrast, InspectedToken
from steering.edits import EditMode, FeatureEdit, resolve_relative
from steering.engine.channel import RequestOutput
from steering.engine.engine import Engine
from steering.engine.stats import AdmittedRequest
from steering.errors import EngineClosedError, InvalidRequestError, RequestFailedError
from steering.frontend.detokenize import TextStream
from steering.frontend.logprobs import TokenLogprobs, with_texts
from steering.models.gemma import special_token_ids
from steering.requests import (
    DEFAULT_SEARCH_RESULTS,
    DEFAULT_TOP_K,
    DEFAULT_TOP_TOKENS,
    ContrastRequest,
    FeatureCardRequest,
    FinishReason,
    GenerationRequest,
    InspectRequest,
    InspectSpec,
    Limits,
    Receipt,
    SamplingParams,
    SearchBy,
    TextRequest,
    inspect_top_k,
    reply_bytes,
    validate_contrast,
    validate_feature_card,
    validate_inspect,
    validate_query,
    validate_reply_size,
    validate_text,
)
from steering.steer.hooks import SaeAttachment
from steering.steer.plan import RowResult
from steering.steer.presets import Preset, with_preset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextChunk:
    """New tokens and their text; the last chunk of a request also says how and why it ended."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None = None  # set on the last chunk only
    prompt_tokens: int = 0
    completion_tokens: int = 0  # generated so far, in all
    seed: int = 0  # the sampling seed in use
    watched: tuple[tuple[float, ...], ...] = ()  # one per token id, when the request watches
    receipts: tuple[Receipt, ...] = ()  # on the last chunk: what each edit did
    logprobs: tuple[TokenLogprobs, ...] = ()  # one per token id, when the request asks


@dataclass(frozen=True)
class ServedModel:
    """What the front end serves, as DescribeModel tells it."""

    name: str
    num_layers: int
    d_model: int
    vocab_size: int
    context_length: int
    chat: bool  # a chat template is loaded
    saes: tuple[SaeAttachment, ...]
    limits: Limits  # as in force
    labels: dict[str, int]  # SAE name -> labelled features
    presets: tuple[Preset, ...]
    kv_cache_bytes: int = 0  # allocated at startup for every request the limits admit
    cuda_graphs: str = "off"  # "on", "off", or "fallback: <why>" (Engine.cuda_graphs)
    dtype: str = "float32"  # what the model computes in
    batch_invariance: str = ""  # Engine.batch_invariance


class FrontEnd:
    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        *,
        name: str = "model",
        catalog: Catalog | None = None,
        presets: Mapping[str, Preset] | None = None,
        on_admitted: Callable[[AdmittedRequest], None] | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        """`max_message_bytes`: the transport's largest reply; a call whose reply could be
        larger is refused before the work (None: no limit)."""
        self.engine = engine
        self.tokenizer = tokenizer
        self.name = name
        self.catalog = catalog or Catalog({})
        self.presets = dict(presets or {})
        self.special_ids = frozenset(special_token_ids(tokenizer))
        self.on_admitted = on_admitted
        self.max_message_bytes = max_message_bytes
        self.in_flight = 0  # calls taken and not yet ended (a Contrast is one call)
        self.closed = False
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self._thread = threading.Thread(target=engine.run, name="engine", daemon=True)
        # One thread, so calls into the tokenizer never overlap (fast tokenizers are not safe
        # to reconfigure while in use), and a long prompt never stalls the event loop.
        self._tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")
        # No prompt within the token limit has more characters than this: longer ones are
        # refused before tokenizing them, so work per request stays bounded. (A token covers at
        # most as many characters as its vocabulary entry; the margin covers normalizers.)
        longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
        self.max_prompt_chars = 2 * self.limits.max_prompt_tokens * longest

    @property
    def limits(self) -> Limits:
        """The limits in force: the configured ones, within the model's context."""
        return self.engine.limits

    def describe(self) -> ServedModel:
        self._refuse_if_closed()
        config = self.engine.model.config.get_text_config()
        return ServedModel(
            name=self.name,
            num_layers=int(config.num_hidden_layers),
            d_model=int(config.hidden_size),
            vocab_size=int(config.vocab_size),
            context_length=self.engine.context_length,
            chat=self.chat,
            saes=self.engine.hooks.attachments,
            limits=self.limits,
            labels={a.name: self.catalog.count(a.name) for a in self.engine.hooks.attachments},
            presets=tuple(self.presets.values()),
            kv_cache_bytes=self.engine.kv_cache_bytes,
            cuda_graphs=self.engine.cuda_graphs,
            dtype=str(self.engine.dtype).removeprefix("torch."),
            batch_invariance=self.engine.batch_invariance,
        )

    @property
    def running(self) -> bool:
        """Whether the engine thread is alive."""
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Take no new calls; those in flight carry on, every part of them (the texts of a
        Contrast not yet in the engine included), until `stop`."""
        self.closed = True

    def _refuse_if_closed(self) -> None:
        if self.closed:
            raise EngineClosedError("the server is shutting down and takes no new calls")

    @contextmanager
    def _call(self) -> Iterator[None]:
        """One caller's call: refused once closed, else counted in `in_flight` until it ends."""
        self._refuse_if_closed()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    @contextmanager
    def _discovery_call(self) -> Iterator[None]:
        """An Inspect or Contrast: one request against the queue limits however many texts it
        reads (QueueFullError at capacity); its texts take turns for the discovery rows."""
        self.engine.reserve()
        try:
            yield
        finally:
            self.engine.release()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the engine thread; requests still in it end with EngineClosedError."""
        self.engine.stop()
        self._thread.join(timeout)
        self._tokenizer_thread.shutdown(wait=False)

    async def generate(self, request: TextRequest) -> AsyncGenerator[TextChunk, None]:
        """Stream one request's chunks; raises its domain errors before the first chunk."""
        with self._call():
            async for chunk in self._generate(request, report=True):
                yield chunk

    async def warm_up(self) -> None:
        """Short generations through the whole path, before the first user request: one plain
        and, with an SAE, one steered beside it (so decode graphs are checked on both kinds of
        row before anyone relies on them)."""
        plain = TextRequest(
            prompt="Hello",
            sampling=SamplingParams(max_new_tokens=3, ignore_eos=True),
            request_id="warm-up",
        )
        requests = [plain]
        for attachment in self.engine.hooks.attachments[:1]:
            edit = FeatureEdit(attachment.name, 0, EditMode.ADD, 1.0)
            requests.append(replace(plain, edits=(edit,), request_id="warm-up-steered"))

        async def run(request: TextRequest) -> None:
            async for _ in self._generate(request, report=False):
                pass

        start = time.perf_counter()
        await asyncio.gather(*(run(r) for r in requests))
        log.info(
            "warm-up (%d generations) took %.3f s; CUDA graphs: %s",
            len(requests),
            time.perf_counter() - start,
            self.engine.cuda_graphs,
        )

    def tokenize(self, request: TextRequest) -> tuple[int, ...]:
        """Prompt ids: the tokenizer's defaults for text, the chat template for a chat; one BOS."""
        if request.prompt is not None:
            return tuple(self.tokenizer(request.prompt).input_ids)
        messages = [{"role": m.role, "content": m.content} for m in request.chat or ()]
        try:
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True
            )
        except Exception as exc:  # the template raises for conversations it refuses
            raise InvalidRequestError(
                "chat.messages", f"the chat template refused it: {exc}"
            ) from exc
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return self._one_bos([int(i) for i in ids])

    def _one_bos(self, ids: list[int]) -> tuple[int, ...]:
        """Exactly one leading BOS, whether the template wrote none, one or two."""
        bos = self.tokenizer.bos_token_id
        if bos is None:
            return tuple(ids)
        start = 0
        while start < len(ids) and ids[start] == bos:
            start += 1
        return (bos, *ids[start:])

    def _resolved(self, request: TextRequest) -> TextRequest:
        """The request with its relative edits (its own and its rules') made absolute through
        the catalog's typical maxima; what cannot be resolved is left for validation to refuse."""
        if not any(e.relative for e in request.edits) and not any(
            e.relative for rule in request.rules for e in rule.apply
        ):
            return request
        d_sae_of, top = self.engine.d_sae_of, self.catalog.typical_max
        rules = tuple(
            replace(rule, apply=resolve_relative(rule.apply, top, d_sae_of))
            for rule in request.rules
        )
        return replace(request, edits=resolve_relative(request.edits, top, d_sae_of), rules=rules)

    def _validate(self, request: TextRequest) -> None:
        validate_text(request, self.limits, self.engine.d_sae_of, chat=self.chat)
        self._check_chars(request, "prompt" if request.prompt is not None else "chat.messages")

    def _check_chars(self, request: TextRequest, field: str) -> None:
        if request.prompt is not None:
            chars = len(request.prompt)
        else:
            chars = sum(len(m.role) + len(m.content) for m in request.chat or ())
        if chars > self.max_prompt_chars:
            raise InvalidRequestError(
                field,
                f"{chars} characters is more than a prompt of "
                f"{self.limits.max_prompt_tokens} tokens can hold",
            )

    async def _generate(
        self, request: TextRequest, *, report: bool
    ) -> AsyncGenerator[TextChunk, None]:
        request = self._resolved(self._with_preset(request))
        self._validate(request)
        prompt_ids = await self._tokenize(request)
        engine_request = GenerationRequest(
            prompt_ids,
            request.sampling,
            request.edits,
            request.request_id,
            request.watch,
            rules=request.rules,
        )
        kind = AdmittedRequest(
            request.request_id, len(prompt_ids), request.edits, watched=len(request.watch)
        )
        stream = TextStream(self.tokenizer, request.sampling.stop)
        given = 0  # tokens the caller was given: none after the one that completed a stop string
        async with aclosing(self._outputs(engine_request, kind if report else None)) as outputs:
            async for key, out in outputs:
                if stream.stopped:  # the engine stepped past the stop before it was told
                    if out.finished:
                        yield TextChunk(
                            (),
                            "",
                            FinishReason.STOP,
                            out.prompt_tokens,
                            given,
                            out.seed or 0,
                            receipts=out.receipts,
                        )
                    continue
                n, text, stopped = self._push(stream, out.token_ids)
                given += n
                if stopped and not out.finished:
                    self.engine.finish(key, FinishReason.STOP)
                reason = FinishReason.STOP if stopped and out.finished else out.finish_reason
                yield TextChunk(
                    tuple(out.token_ids[:n]),
                    text + (stream.flush() if out.finished else ""),
                    reason,
                    out.prompt_tokens,
                    given,
                    out.seed or 0,
                    tuple(out.watched[:n]),
                    out.receipts,
                    await self._logprobs(out, n),
                )

    async def _logprobs(self, out: RequestOutput, n: int) -> tuple[TokenLogprobs, ...]:
        """The first `n` tokens' log-probabilities with their texts (none unless asked for)."""
        if not out.logprobs:
            return ()
        ids, scored = out.token_ids[:n], out.logprobs[:n]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._tokenizer_thread, with_texts, ids, scored, self._token_texts
        )

    @staticmethod
    def _push(stream: TextStream, token_ids: Sequence[int]) -> tuple[int, str, bool]:
        """How many of `token_ids` the caller is given, their new text, and whether a stop
        string ended it: all of them, or those up to the one that completes a stop string (the
        engine may have stepped past it)."""
        if not stream.stop_strings:
            return len(token_ids), stream.push(token_ids), False
        text = ""
        for n, token in enumerate(token_ids, 1):
            text += stream.push((token,))
            if stream.stopped:
                return n, text, True
        return len(token_ids), text, False

    def _with_preset(self, request: TextRequest) -> TextRequest:
        """The request with its preset's edits merged in (its own edits win on a feature)."""
        if not request.preset:
            return request
        preset = self.presets.get(request.preset)
        if preset is None:
            known = ", ".join(sorted(self.presets)) or "none"
            raise InvalidRequestError(
                "preset", f"unknown preset {request.preset!r} (known: {known})"
            )
        return replace(request, edits=with_preset(request.edits, preset), preset="")

    async def _tokenize(self, request: TextRequest) -> tuple[int, ...]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizer_thread, self.tokenize, request)

    async def _outputs(
        self, request: GenerationRequest, admitted: AdmittedRequest | None, reserved: bool = False
    ) -> AsyncGenerator[tuple[int, RequestOutput], None]:
        """A request's outputs from the engine, with its key, until the last one; raises for a
        request that failed or was aborted by a shutdown. Leaving early aborts the row."""
        loop, ready = asyncio.get_running_loop(), asyncio.Event()

        def wake() -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(ready.set)

        handle = self.engine.add(request, notify=wake, reserved=reserved)
        if admitted is not None and self.on_admitted is not None:
            self.on_admitted(admitted)
        done = False
        try:
            while not done:
                await ready.wait()
                ready.clear()
                out = handle.channel.take(0)
                if out is None:
                    continue
                done = out.finished
                if out.finish_reason is FinishReason.ERROR:
                    raise RequestFailedError(out.error or "the request failed")
                if out.finish_reason is FinishReason.ABORTED:
                    raise EngineClosedError("the server shut down before the request finished")
                yield handle.key, out
        finally:
            if not done:
                self.engine.abort(handle.key)  # the caller left: free its row within a step

    async def _prefill(
        self, ids: tuple[int, ...], request: TextRequest, spec: InspectSpec, kind: str
    ) -> RowResult | None:
        """Read `ids` through the (steered) model without generating: what the hooks read."""
        engine_request = GenerationRequest(
            ids, edits=request.edits, request_id=request.request_id, inspect=spec
        )
        admitted = AdmittedRequest(request.request_id, len(ids), request.edits, kind=kind)
        readings = None
        # A text of a discovery call, which `_discovery_call` counted as one request.
        async with aclosing(self._outputs(engine_request, admitted, reserved=True)) as outputs:
            async for _, out in outputs:
                readings = out.readings
        return readings

    # ---- discovery ----------------------------------------------------------------------------

    async def inspect(self, request: InspectRequest) -> tuple[InspectedToken, ...]:
        """Every input token with its top features per SAE and the named features' values."""
        with self._call(), self._discovery_call():
            return await self._inspect(request)

    async def _inspect(self, request: InspectRequest) -> tuple[InspectedToken, ...]:
        request = replace(request, text=self._resolved(request.text))
        self._validate(request.text)
        saes = request.saes or tuple(self.engine.d_sae_of)
        top_k = inspect_top_k(request)  # 0 under no_top: no full encode, no top lists
        spec = InspectSpec(saes, top_k, request.features)
        validate_inspect(spec, self.limits, self.engine.d_sae_of)
        ids = await self._tokenize(request.text)
        texts = await asyncio.get_running_loop().run_in_executor(
            self._tokenizer_thread, self._token_texts, ids
        )
        entries = top_k * len(saes) + len(spec.features)
        reported = (saes if top_k else ()) + tuple(f.sae for f in spec.features)
        text_bytes = sum(len(t.encode()) for t in texts)
        size = reply_bytes(len(ids), entries, self._entry_text_bytes(reported), text_bytes)
        remedy = "send a shorter text, or ask for a smaller top_k, fewer SAEs or features"
        validate_reply_size(size, self.max_message_bytes, "input", remedy)
        readings = await self._prefill(ids, request.text, spec, "inspect")
        label, top_max = self.catalog.label, self.catalog.typical_max
        tokens = []
        for t, (token, text) in enumerate(zip(ids, texts, strict=True)):
            top = readings.top[t] if readings and readings.top else {}
            named = (
                readings.named[t] if readings and readings.named else (0.0,) * len(spec.features)
            )
            tokens.append(
                InspectedToken(
                    token_id=token,
                    text=text,
                    special=token in self.special_ids,
                    top=discovery.top_features(top, top_k, label, top_max),
                    features=discovery.named_features(spec.features, named, label, top_max),
                )
            )
        return tuple(tokens)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token decoded alone (a few at a time: generated tokens a caller watched)."""
        return self._token_texts(ids)

    def _token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token decoded alone (on the tokenizer's thread)."""
        return [str(self.tokenizer.decode([token])) for token in ids]

    def _entry_text_bytes(self, saes: Sequence[str]) -> int:
        """The most an entry of a reply naming one of `saes` holds in strings: name and label."""
        catalog = self.catalog
        return max((len(s.encode()) + catalog.longest_label_bytes(s) for s in saes), default=0)

    async def contrast(
        self, request: ContrastRequest
    ) -> tuple[tuple[FeatureContrast, ...], tuple[FeatureContrast, ...]]:
        """The features that most separate two sets of texts (DESIGN: Contrast)."""
        with self._call(), self._discovery_call():
            return await self._contrast(request)

    async def _contrast(
        self, request: ContrastRequest
    ) -> tuple[tuple[FeatureContrast, ...], tuple[FeatureContrast, ...]]:
        validate_contrast(request, self.limits, self.engine.d_sae_of)
        saes = (request.sae,) if request.sae else tuple(self.engine.d_sae_of)
        entries = 2 * (request.top_k or DEFAULT_TOP_K)
        size = reply_bytes(1, entries, self._entry_text_bytes(saes))
        validate_reply_size(size, self.max_message_bytes, "top_k", "ask for a smaller top_k")
        spec = InspectSpec(saes, means=True)
        means = [
            await self._set_means(field, texts, spec)
            for field, texts in (("a", request.a), ("b", request.b))
        ]
        return discovery.contrast(
            means[0], means[1], request.top_k or DEFAULT_TOP_K, self.catalog.label
        )

    async def _set_means(
        self, field: str, texts: Sequence[str], spec: InspectSpec
    ) -> dict[str, torch.Tensor]:
        """Per SAE, the mean over texts of each text's mean activation over its steerable
        positions. At most `Engine.discovery_rows` texts of a set are in the engine at once, so
        the texts of concurrent calls take turns there."""
        requests = [TextRequest(prompt=text) for text in texts]
        for i, request in enumerate(requests):
            self._check_chars(request, f"{field}[{i}]")
        ids = [await self._tokenize(r) for r in requests]
        for i, prompt in enumerate(ids):
            self._check_text_ids(prompt, f"{field}[{i}]")
        gate = asyncio.Semaphore(self.engine.discovery_rows)

        async def one(prompt: tuple[int, ...], request: TextRequest) -> dict[str, torch.Tensor]:
            async with gate:
                readings = await self._prefill(prompt, request, spec, "contrast")
            steerable = sum(1 for t in prompt if t not in self.special_ids)
            sums = readings.sums if readings else {}
            return {sae: sums[sae] / steerable for sae in spec.saes}

        per_text = await asyncio.gather(*(one(p, r) for p, r in zip(ids, requests, strict=True)))
        return {sae: torch.stack([m[sae] for m in per_text]).mean(dim=0) for sae in spec.saes}

    def _check_text_ids(self, ids: Sequence[int], field: str) -> None:
        if len(ids) > self.limits.max_prompt_tokens:
            raise InvalidRequestError(
                field,
                f"the text has {len(ids)} tokens, more than the limit of "
                f"{self.limits.max_prompt_tokens}",
            )
        if all(t in self.special_ids for t in ids):
            raise InvalidRequestError(field, "the text has no steerable position")

    async def search(
        self, query: str, *, sae: str = "", limit: int = 0, by: SearchBy = SearchBy.LABELS
    ) -> list[FeatureMatch]:
        """Features matching `query`, best first: by their labels (searched off the event loop),
        by the model's reading of the query (DESIGN: search by meaning), or both merged (label
        hits first, each feature once, at most `limit` in all)."""
        with self._call():
            self._validate_search(query, sae, limit)
            limit = limit or DEFAULT_SEARCH_RESULTS
            found: list[FeatureMatch] = []
            if by is not SearchBy.ACTIVATION and (not sae or self.catalog.count(sae)):
                # (a served SAE without labels: nothing to find by labels)
                found = await asyncio.to_thread(self.catalog.search, query, sae=sae, limit=limit)
            if by is SearchBy.LABELS:
                return found
            with self._discovery_call():
                read = await self._search_by_activation(query, sae, limit)
            return discovery.merged(found, read, limit)

    async def _search_by_activation(self, query: str, sae: str, limit: int) -> list[FeatureMatch]:
        """The query read by the model as a prefill-only request (unsteered); per feature its
        mean activation over the query's steerable positions, relative to its typical maximum."""
        request = TextRequest(prompt=query)
        self._check_chars(request, "query")
        ids = await self._tokenize(request)
        self._check_text_ids(ids, "query")
        saes = (sae,) if sae else tuple(self.engine.d_sae_of)
        if not saes:
            return []
        readings = await self._prefill(ids, request, InspectSpec(saes, means=True), "search")
        steerable = sum(1 for t in ids if t not in self.special_ids)
        sums = readings.sums if readings else {}
        means = {name: sums[name] / steerable for name in saes if name in sums}
        catalog = self.catalog
        return discovery.activation_matches(
            means, limit, catalog.label, catalog.typical_max, catalog.frequency
        )

    def _validate_search(self, query: str, sae: str, limit: int) -> None:
        if sae and sae not in self.engine.d_sae_of:
            known = ", ".join(sorted(self.engine.d_sae_of)) or "none"
            raise InvalidRequestError("sae", f"unknown SAE {sae!r} (served: {known})")
        if not 0 <= limit <= self.limits.max_search_results:
            raise InvalidRequestError(
                "limit", f"must be between 0 and {self.limits.max_search_results}, got {limit}"
            )
        validate_query(query, self.limits)
        entries = limit or DEFAULT_SEARCH_RESULTS
        saes = (sae,) if sae else tuple(self.engine.d_sae_of)
        size = reply_bytes(1, entries, self._entry_text_bytes(saes))
        validate_reply_size(size, self.max_message_bytes, "limit", "ask for a smaller limit")

    # ---- feature cards ------------------------------------------------------------------------

    async def describe_feature(self, request: FeatureCardRequest) -> FeatureCard:
        """A feature's card: what its label file says, and the tokens its decoder direction
        promotes and suppresses through the unembedding (one matvec, on the engine thread
        between two steps: the device is the engine's)."""
        with self._call():
            validate_feature_card(request, self.limits, self.engine.d_sae_of)
            k, vocab = request.top_tokens or DEFAULT_TOP_TOKENS, len(self.tokenizer)
            effects = await asyncio.wrap_future(
                self.engine.call(
                    lambda: self._token_effects(request.sae, request.feature, k, vocab)
                )
            )
            ids = [i for i, _ in effects.promoted + effects.suppressed]
            texts = await asyncio.get_running_loop().run_in_executor(
                self._tokenizer_thread, self._token_texts, ids
            )
            text_of = dict(zip(ids, texts, strict=True))
            catalog, sae, feature = self.catalog, request.sae, request.feature
            return FeatureCard(
                sae=sae,
                feature=feature,
                label=catalog.label(sae, feature),
                typical_max=catalog.typical_max(sae, feature),
                frequency=catalog.frequency(sae, feature),
                top_contexts=catalog.top_contexts(sae, feature),
                promoted=tuple(TokenWeight(i, text_of[i], w) for i, w in effects.promoted),
                suppressed=tuple(TokenWeight(i, text_of[i], w) for i, w in effects.suppressed),
            )

    def _token_effects(self, sae: str, feature: int, k: int, vocab: int) -> TokenEffects:
        """On the engine thread: the feature's decoder row through the model's unembedding
        (its first `vocab` rows: the tokens the tokenizer has)."""
        model = self.engine.model
        head = model.get_output_embeddings() or model.get_input_embeddings()  # Gemma ties them
        with torch.inference_mode():
            direction = self.engine.hooks.saes[sae].W_dec[feature]  # (d_model,)
            return token_effects(direction, head.weight, k, vocab_size=vocab)
