# syntax=docker/dockerfile:1
# session-events-gateway image.
#
#   docker build -t session-events-gateway .
#   docker run --rm --read-only --tmpfs /tmp -p 8080:8080 -p 127.0.0.1:9090:9090 \
#     -e GATEWAY_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 -e GATEWAY_OIDC_ISSUER=https://idp.example.com/realms/wallet \
#     session-events-gateway
#
# Stage 1 builds wheels of the project and of every dependency, and installs them into a virtualenv
# at /opt/gateway. Stage 2 is a fresh slim Python with only that virtualenv: no compiler, no wheels,
# no source tree. It runs as UID/GID 10001 and needs nothing writable but /tmp, so it works with a
# read-only root filesystem (the Helm chart mounts an emptyDir at /tmp).
#
# tests/test_deploy_image.py runs this file's build-stage RUN lines on the test machine (same
# commands, other folders) and serves a stream from the result as an unprivileged user: keep every
# build step in a RUN line of the build stage.

ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY pyproject.toml README.md /src/
COPY schemas /src/schemas
COPY consumers /src/consumers
COPY gateway /src/gateway
# Wheels of the project and all its dependencies (binary wheels from the index where they exist).
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels "/src[tracing]"
# Install only from those wheels; pip compiles the bytecode now, as nothing can write it at run time.
RUN python -m venv /opt/gateway \
 && /opt/gateway/bin/python -m pip install --no-cache-dir --no-index --find-links /wheels "session-events-gateway[tracing]" \
 && /opt/gateway/bin/session-gateway --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="session-events-gateway" \
      org.opencontainers.image.description="Streams wallet-session status from Kafka to browsers over Server-Sent Events" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=build /opt/gateway /opt/gateway
# GATEWAY_HOST / GATEWAY_INTERNAL_HOST: inside a container the ports must listen beyond loopback;
# which of them is reachable is decided by port publishing (docker) or the Service (Kubernetes).
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_INTERNAL_HOST=0.0.0.0 \
    GATEWAY_INTERNAL_PORT=9090
USER 10001:10001
WORKDIR /
# 8080: the streams (public). 9090: /livez, /readyz, /metrics, /docs (internal: probes and scrapers only).
EXPOSE 8080 9090
# The image has no curl or wget: the Python of the image asks the internal port's /livez.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request as u; port = os.environ.get('GATEWAY_INTERNAL_PORT', '9090'); sys.exit(0 if u.urlopen(f'http://127.0.0.1:{port}/livez', timeout=4).status == 200 else 1)"]
# coreutils (`sleep`, for the chart's preStop exec hook on Kubernetes < 1.30) comes with the slim base.
ENTRYPOINT ["session-gateway", "serve"]
