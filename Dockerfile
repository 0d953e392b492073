# fedswarm node image: one institution's node daemon.
#   docker build -t fedswarm:local .
#   docker run -v fedswarm-data:/data fedswarm:local run --join /dns4/.../tcp/31337/p2p/Qm...
FROM python:3.11-slim

# torch's CPU-only wheels (PyPI's default torch wheel for Linux is the multi-GB CUDA build).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FEDSWARM_DATA_DIR=/data \
    FEDSWARM_LISTEN=/ip4/0.0.0.0/tcp/31337 \
    FEDSWARM_CONTROL=127.0.0.1:8470

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin fedswarm
WORKDIR /opt/fedswarm

# Dependencies first (pinned), so code edits do not re-download torch.
COPY constraints.txt ./
RUN grep -vE '^(pytest|pytest-timeout|ruff|iniconfig|pluggy|pygments)==' constraints.txt > /tmp/runtime-constraints.txt \
 && pip install --extra-index-url "$TORCH_INDEX_URL" -c /tmp/runtime-constraints.txt \
      torch hivemind numpy msgpack uvloop click prometheus-client aiohttp safetensors scikit-learn matplotlib

COPY pyproject.toml README.md ./
COPY node ./node
COPY p2p ./p2p
COPY training ./training
RUN pip install --no-deps .

RUN mkdir -p /data /shared && chown fedswarm:fedswarm /data /shared
USER fedswarm
VOLUME ["/data"]
EXPOSE 31337

# Healthy = the control API answers (it is bound to the container's own loopback).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["fedswarm", "status", "--control", "127.0.0.1:8470"]

ENTRYPOINT ["fedswarm"]
CMD ["run"]
