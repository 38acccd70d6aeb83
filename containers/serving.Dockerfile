# The KServe predictor image used by ctpipe's InferenceService (a custom predictor).
#   docker build -f containers/serving.Dockerfile -t ctpipe/serving:0.1.0 .
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
LABEL org.opencontainers.image.title="ctpipe-serving" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
RUN useradd --uid 10001 --create-home ctpipe
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready'); sys.exit(0)"
# In a pod the server must listen on all interfaces; the local default stays 127.0.0.1.
ENTRYPOINT ["python", "-m", "serving.server", "--host", "0.0.0.0", "--port", "8080"]
