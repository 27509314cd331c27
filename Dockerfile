# syntax=docker/dockerfile:1
# One image for every role of a deployment (docker-compose.yaml, docs/DEPLOY.md): the Dagster code
# server, the Dagster webserver, the Dagster daemon and the scoring service (`recs serve`, the default
# command). Installs exactly uv.lock (no dev group) into /app/.venv; the source stays in /app because the
# package finds sql/ and feature_repo/ beside itself. Runs as an unprivileged user; everything the
# pipeline writes goes to RECS_HOME (/data, a volume). No secret is baked in: passwords, the model
# signing key and API keys come from the environment at run time.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# uv at the version scripts/_env.sh installs
FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# The locked dependencies first (a layer that survives source edits), then the project itself
# (installed editable: the package resolves sql/ and feature_repo/ from /app).
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-project
COPY . /app
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev \
    && .venv/bin/python -m compileall -q recs_pipeline

FROM ${PYTHON_IMAGE}
# libgomp: OpenMP runtime of LightGBM and implicit
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 recs \
    && useradd --system --uid 10001 --gid recs --create-home --home-dir /home/recs recs \
    && mkdir -p /data/models \
    && chown -R recs:recs /data
# Code and environment owned by root, read-only to the user that runs them (bytecode compiled above).
COPY --from=build /app /app
WORKDIR /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RECS_HOME=/data \
    DAGSTER_HOME=/data/dagster \
    RECS_SERVE_HOST=0.0.0.0 \
    RECS_SERVE_PORT=8000
USER recs
VOLUME ["/data"]
EXPOSE 8000
# The service's liveness (/healthz). The Dagster roles override it in docker-compose.yaml (gRPC health
# check, /server_info, daemon heartbeats).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RECS_SERVE_PORT', '8000'), timeout=4)"]
CMD ["recs", "serve"]
