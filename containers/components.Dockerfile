# The image every ctpipe KFP component runs in: Python 3.11, ctpipe with its pinned
# dependencies, and a Java runtime for Spark. Build from the repository root:
#   docker build -f containers/components.Dockerfile -t ctpipe/components:0.1.0 .
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY components components
COPY pipelines pipelines
COPY serving serving
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="ctpipe-components" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
RUN useradd --uid 10001 --create-home ctpipe
USER 10001
ENV PYSPARK_PYTHON=python3 GX_ANALYTICS_ENABLED=False MLFLOW_ENABLE_TELEMETRY=false FEAST_USAGE=False
