"""Serving scenarios: N concurrent gRPC (or HTTP) clients against a real server process, and
its peers.

The server runs as a subprocess (as deployed), on loopback, with one torch thread; clients are
threads of this process reading their streams. Peers: `model.generate` on a static batch (what
a user would script), the same requests one after another, and the front end and the engine
in-process (the cost of gRPC, and of the text path).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import torch

from bench.common import Setup, Table, interleave
from bench.scenarios import engine_rates, make_engine, prompts
from steering import save_sae
from steering.demo.toy import build_tokenizer, random_sae
from steering.frontend import FrontEnd
from steering.requests import SamplingParams, TextRequest
from steering_proto.v1 import steering_pb2 as pb
from steering_proto.v1 import steering_pb2_grpc as pb_grpc


@contextmanager
def server_process(model: Any, setup: Setup, max_rows: int) -> Iterator[str]:
    """A `steering-server` subprocess serving `model` (saved to a temporary folder); its target."""
    with server_ready(model, setup, max_rows) as ready:
        yield str(ready["target"])


@contextmanager
def server_ready(model: Any, setup: Setup, max_rows: int) -> Iterator[dict[str, Any]]:
    """A `steering-server` subprocess serving `model`; its ready file (gRPC target, HTTP port)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        model.save_pretrained(folder)
        build_tokenizer().save_pretrained(folder)
        d_model = model.config.get_text_config().hidden_size
        sae = save_sae(random_sae(d_model, setup.d_sae, seed=0), Path(tmp) / "sae")
        layer = model.config.get_text_config().num_hidden_layers // 2
        dtype = str(setup.dtype).removeprefix("torch.")
        ready = Path(tmp) / "ready.json"
        args = [
            sys.executable, "-m", "steering_server", "--model", str(folder),
            "--sae", f"a={sae}@{layer}", "--host", "127.0.0.1", "--port", "0",
            "--metrics-port", "0", "--http-port", "0", "--device", setup.device.type,
            "--dtype", dtype,
            "--max-active-rows", str(max_rows), "--max-new-tokens", "4096",
            "--ready-file", str(ready),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        with (Path(tmp) / "server.log").open("wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            yield _wait_ready(proc, ready)
        finally:
            proc.terminate()
            proc.wait(60)


def _wait_ready(proc: subprocess.Popen[bytes], ready: Path, timeout: float = 600) -> dict[str, Any]:
    """The server's ready file, once it has written it."""
    end = time.monotonic() + timeout
    while not ready.is_file():
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError("the server exited (or hung) before serving")
        time.sleep(0.05)
    answer: dict[str, Any] = json.loads(ready.read_text())
    return answer


def _texts(n: int) -> list[str]:
    return [f"Request {i}: tell me about the sea and the boats" for i in range(n)]


def one_stream(stub: Any, prompt: str, new: int) -> tuple[int, float, list[float], float]:
    """(tokens, time to first token, inter-token gaps, end time) of one greedy stream."""
    request = pb.GenerateRequest(
        prompt=prompt, sampling=pb.SamplingParams(max_new_tokens=new, ignore_eos=True)
    )
    start = last = time.perf_counter()
    first, gaps, tokens = 0.0, [], 0
    for chunk in stub.Generate(request):
        now = time.perf_counter()
        n = len(chunk.token_ids)
        if n and not tokens:
            first = now - start
            n -= 1
        gaps += [(now - last) / max(n, 1)] * n
        tokens += len(chunk.token_ids)
        last = now
    return tokens, first, gaps, last


def grpc_rates(stub: Any, n: int, new: int, *, concurrent: bool) -> dict[str, float]:
    """Aggregate tokens/s and latency percentiles of `n` streams, concurrent or sequential."""
    texts = _texts(n)
    start = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(partial(one_stream, stub, new=new), texts))
    else:
        results = [one_stream(stub, t, new) for t in texts]
    wall = max(r[3] for r in results) - start
    firsts = sorted(r[1] for r in results)
    gaps = sorted(g for r in results for g in r[2])
    return {
        "tokens/s": sum(r[0] for r in results) / wall,
        "TTFT p50 ms": 1e3 * statistics.median(firsts),
        "TTFT p99 ms": 1e3 * _pct(firsts, 0.99),
        "ITL p50 ms": 1e3 * statistics.median(gaps),
        "ITL p99 ms": 1e3 * _pct(gaps, 0.99),
    }


def _pct(values: Sequence[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def generate_rates(model: Any, n: int, prompt_len: int, new: int) -> dict[str, float]:
    """`model.generate` on a static batch of equal-length prompts (no padding needed)."""
    vocab = model.config.get_text_config().vocab_size
    ids = torch.tensor(prompts(n, prompt_len, vocab, seed=9), device=model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
        )
    return {"tokens/s": (out.shape[1] - ids.shape[1]) * n / (time.perf_counter() - start)}


def serving(model: Any, setup: Setup, clients: Sequence[int], new: int) -> list[Table]:
    tables = []
    with (
        server_process(model, setup, max(clients)) as target,
        grpc.insecure_channel(target) as channel,
    ):
        stub = pb_grpc.SteeringServiceStub(channel)
        prompt_len = len(
            build_tokenizer()("Request 0: tell me about the sea and the boats").input_ids
        )
        for n in clients:
            runs = {
                f"server, {n} concurrent gRPC streams": partial(
                    grpc_rates, stub, n, new, concurrent=True
                ),
                f"server, {n} requests one after another": partial(
                    grpc_rates, stub, n, new, concurrent=False
                ),
                f"model.generate, static batch of {n}": partial(
                    generate_rates, model, n, prompt_len, new
                ),
            }
            title = f"Serving {n} clients, {new} new tokens each"
            tables.append(
                interleave(
                    Table(title, "", f"model.generate, static batch of {n}"), runs, setup.reps
                )
            )
    return tables


def frontend_rates(front: FrontEnd, n: int, new: int) -> dict[str, float]:
    """Tokens/s of `n` concurrent text requests through the front end: the text path, no gRPC."""
    sampling = SamplingParams(max_new_tokens=new, ignore_eos=True)

    async def one(text: str) -> int:
        request = TextRequest(prompt=text, sampling=sampling)
        return sum([len(chunk.token_ids) async for chunk in front.generate(request)])

    async def run() -> list[int]:
        return await asyncio.gather(*(one(text) for text in _texts(n)))

    start = time.perf_counter()
    tokens = sum(asyncio.run(run()))
    return {"tokens/s": tokens / (time.perf_counter() - start)}  # prefill included


def grpc_cost(model: Any, setup: Setup, n: int, new: int) -> list[Table]:
    """The same n concurrent greedy requests: the engine and the front end in this process (each
    on its own copy of the model), and a server over gRPC."""
    engine = make_engine(model, setup, n)
    front = FrontEnd(make_engine(copy.deepcopy(model), setup, n), build_tokenizer())
    front.start()
    vocab = model.config.get_text_config().vocab_size
    with server_process(model, setup, n) as target, grpc.insecure_channel(target) as channel:
        stub = pb_grpc.SteeringServiceStub(channel)
        prompt_len = len(build_tokenizer()(_texts(1)[0]).input_ids)
        batch = prompts(n, prompt_len, vocab, seed=11)

        def in_process() -> dict[str, float]:
            start = time.perf_counter()
            engine_rates(engine, batch, [()] * n, new)
            return {"tokens/s": n * new / (time.perf_counter() - start)}  # prefill included

        runs = {
            f"front end in-process, {n} streams": lambda: frontend_rates(front, n, new),
            f"engine in-process, {n} streams": in_process,
            f"over gRPC, {n} streams": lambda: {
                "tokens/s": grpc_rates(stub, n, new, concurrent=True)["tokens/s"]
            },
        }
        table = interleave(
            Table(f"gRPC cost, {n} streams", "", f"front end in-process, {n} streams"),
            runs,
            setup.reps,
        )
    front.stop()
    engine.hooks.remove()
    return [table]


def http_stream(client: Any, model: str, prompt: str, new: int) -> tuple[int, float]:
    """(tokens, end time) of one greedy stream over HTTP (server-sent events, as the `openai`
    SDK reads them), its tokens counted by the usage chunk."""
    body = {
        "model": model, "prompt": prompt, "max_tokens": new, "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    tokens = 0
    with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and '"usage":{' in line:
                tokens = json.loads(line.removeprefix("data: "))["usage"]["completion_tokens"]
    return tokens, time.perf_counter()


def http_rates(client: Any, model: str, n: int, new: int) -> dict[str, float]:
    """Aggregate tokens/s of `n` concurrent HTTP streams."""
    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda t: http_stream(client, model, t, new), _texts(n)))
    assert all(r[0] == new for r in results), [r[0] for r in results]
    return {"tokens/s": sum(r[0] for r in results) / (max(r[1] for r in results) - start)}


def http_cost(model: Any, setup: Setup, n: int, new: int) -> list[Table]:
    """The same n concurrent greedy streams over HTTP and over gRPC from one server process,
    and through the front end in this process (on its own copy of the model)."""
    front = FrontEnd(make_engine(copy.deepcopy(model), setup, n), build_tokenizer())
    front.start()
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    with (
        server_ready(model, setup, n) as ready,
        grpc.insecure_channel(ready["target"]) as channel,
        httpx.Client(
            base_url=f"http://127.0.0.1:{ready['http_port']}", limits=limits, timeout=600
        ) as client,
    ):
        stub = pb_grpc.SteeringServiceStub(channel)
        name = client.get("/v1/models").json()["data"][0]["id"]
        runs = {
            f"over gRPC, {n} streams": lambda: {
                "tokens/s": grpc_rates(stub, n, new, concurrent=True)["tokens/s"]
            },
            f"over HTTP (SSE), {n} streams": lambda: http_rates(client, name, n, new),
            f"front end in-process, {n} streams": lambda: frontend_rates(front, n, new),
        }
        table = interleave(
            Table(f"HTTP cost, {n} streams", "", f"over gRPC, {n} streams"), runs, setup.reps
        )
    front.stop()
    return [table]
