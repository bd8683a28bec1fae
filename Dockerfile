# The project image: the `xray` entry point for training, tuning and export pods.
#   make image IMAGE=registry.example.com/xray TAG=0.1.0            (CPU)
#   make image IMAGE=registry.example.com/xray TAG=0.1.0-gpu VARIANT=gpu
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG VARIANT=cpu
WORKDIR /src
COPY pyproject.toml README.md requirements.lock requirements-gpu.lock ./
COPY trainer ./trainer
COPY tuner ./tuner
COPY serving ./serving
COPY clients ./clients
COPY xray ./xray
# The versions the tests ran: the same lock files as make venv (pinned, hashed), then the project itself.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && if [ "$VARIANT" = "gpu" ]; then lock=requirements-gpu.lock; else lock=requirements.lock; fi \
 && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r "$lock" \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps .

# No compilers or build tools in the final image: only the virtualenv.
FROM python:${PYTHON_VERSION}-slim
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
