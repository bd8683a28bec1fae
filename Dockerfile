# The project image: the `xray` entry point for training, tuning and export pods.
#   make image IMAGE=registry.example.com/xray TAG=0.1.0            (CPU)
#   make image IMAGE=registry.example.com/xray TAG=0.1.0-gpu VARIANT=gpu
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG VARIANT=cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY tuner ./tuner
COPY serving ./serving
COPY clients ./clients
COPY xray ./xray
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir . \
 && if [ "$VARIANT" = "gpu" ]; then /opt/venv/bin/pip install --no-cache-dir "tensorflow[and-cuda]==2.21.*"; fi

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
