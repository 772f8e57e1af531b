# LLM service and keyword-event worker (torch, CPU build by default; TORCH_INDEX for CUDA wheels).
#   docker build -f docker/server.Dockerfile -t wakeline/server .
# Offline: put wheels in ./wheelhouse (pip download ...) and pass --build-arg PIP_ARGS="--no-index --find-links /app/wheelhouse"
ARG BASE_IMAGE=wakeline/base
FROM ${BASE_IMAGE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_ARGS=""
COPY pyproject.toml README.md /app/
COPY wheelhous[e] /app/wheelhouse/
RUN pip install -q ${PIP_ARGS} --extra-index-url ${TORCH_INDEX} "torch>=2.4" safetensors tokenizers jinja2 pyyaml
COPY protos /app/protos
COPY services /app/services
COPY llm /app/llm
COPY edge /app/edge
COPY kws /app/kws
COPY docker/healthcheck.py /app/docker/healthcheck.py
RUN pip install -q ${PIP_ARGS} --no-deps -e . && pip install -q ${PIP_ARGS} \
      "protobuf>=5.26" "grpcio>=1.62" "grpcio-health-checking>=1.62" "grpcio-reflection>=1.62" \
      "pydantic>=2.5" "pydantic-settings>=2.1" "prometheus-client>=0.19" "redis>=5.0" hiredis tqdm numpy
# models are mounted at /models (docker-compose.yml); nothing is downloaded at run time
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
EXPOSE 50061
CMD ["wakeline", "llm", "serve", "--host", "0.0.0.0", "--model", "/models/llm/dense"]
