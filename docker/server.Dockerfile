# LLM service and keyword-event worker (torch). Wheels in docker/wheelhouse/ are preferred over the
# index (e.g. a CPU torch wheel); TORCH_SPEC pins torch, TORCH_INDEX adds an index (CUDA wheels).
#   docker build --network host -f docker/server.Dockerfile -t wakeline/server .
ARG BASE_IMAGE=wakeline/base
FROM ${BASE_IMAGE}
ARG TORCH_SPEC="torch>=2.4"
ARG TORCH_INDEX=""
ARG PIP_ARGS=""
COPY docker/wheelhouse/ /app/wheelhouse/
RUN pip install -q ${PIP_ARGS} --find-links /app/wheelhouse ${TORCH_INDEX:+--extra-index-url $TORCH_INDEX} \
      "${TORCH_SPEC}" safetensors tokenizers jinja2 pyyaml numpy \
      "protobuf>=5.26" "grpcio>=1.62" "grpcio-health-checking>=1.62" "grpcio-reflection>=1.62" \
      "pydantic>=2.5" "pydantic-settings>=2.1" "prometheus-client>=0.19" "redis>=5.0" hiredis tqdm \
 && rm -rf /app/wheelhouse
COPY pyproject.toml README.md /app/
COPY protos /app/protos
COPY services /app/services
COPY llm /app/llm
COPY edge /app/edge
COPY kws /app/kws
COPY docker/healthcheck.py /app/docker/healthcheck.py
RUN pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || pip install -q --no-deps -e .
# models are mounted at /models (docker-compose.yml); nothing is downloaded at run time
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
EXPOSE 50061
CMD ["wakeline", "llm", "serve", "--host", "0.0.0.0", "--model", "/models/llm/dense"]
