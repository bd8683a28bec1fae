# The project image: the `xray` entry point for training, tuning and export pods.
#   make image IMAGE=registry.example.com/xray TAG=0.1.0            (CPU)
#   make image IMAGE=registry.example.com/xray TAG=0.1.0-gpu VARIANT=gpu
# BASE is any image with Python 3.11 and its venv module: python:3.11-slim from Docker Hub by default; the local
# cluster builds on a Debian bookworm base made with mmdebstrap (xray/localcluster/images.py), since no registry
# is reachable there.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG VARIANT=cpu
WORKDIR /src
# .pip-cert.pem: a CA bundle for pip behind a TLS-inspecting proxy (make image PIP_CERT=/path/to/ca.pem puts it
# there); it exists in this build stage only, never in the final image. The pattern matches nothing without it.
COPY requirements.lock requirements-gpu.lock .pip-cert.pe[m] ./
# The versions the tests ran: the same lock files as make venv (pinned, hashed). Dependencies first, so that a
# change to the project's own code rebuilds only the last layer.
RUN if [ -s .pip-cert.pem ]; then export PIP_CERT=/src/.pip-cert.pem; fi \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && if [ "$VARIANT" = "gpu" ]; then lock=requirements-gpu.lock; else lock=requirements.lock; fi \
 && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r "$lock"
COPY pyproject.toml README.md ./
COPY xray ./xray
RUN if [ -s .pip-cert.pem ]; then export PIP_CERT=/src/.pip-cert.pem; fi \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps .

# No compilers or build tools in the final image: only the virtualenv.
FROM ${BASE}
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin xray
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    TF_USE_LEGACY_KERAS=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/xray \
    KERAS_HOME=/home/xray/.keras
USER 10001
WORKDIR /home/xray
ENTRYPOINT ["xray"]
CMD ["--help"]
