#!/usr/bin/env bash
# Train both default LLMs (dense Llama-shaped + Mixtral-shaped MoE) concurrently on one GPU.
#
#   bash scripts/gpu/train_llm.sh            # H100: ~330 s of training each, ~7 min wall in all
#   SMOKE=1 bash scripts/gpu/train_llm.sh    # tiny shapes, a few seconds, runs on CPU
#   STAGE=moe bash scripts/gpu/train_llm.sh  # stage 2: the MoE alone, attention warm-started from
#                                            # models/llm/dense (~270 s of training, ~5.5 min wall)
#
# Needs the corpus from `python scripts/llm_corpus/build.py` in .llmdata/ (carried, git-ignored).
# Writes $OUT/train_llm/{dense,moe}/ (Hugging Face folders), {dense,moe}_metrics.json, log.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1
export TOKENIZERS_PARALLELISM=false
OUT=${OUT:-$PWD/out}
STAGE=${STAGE:-all}
R=$OUT/train_llm$([[ $STAGE == moe ]] && echo 2 || true)
mkdir -p "$R"
PY=${PYTHON:-python3}

if [[ "${SMOKE:-0}" == 1 ]]; then
  ARGS=(--seconds "${TRAIN_SECONDS:-12}" --batch-tokens 2048 --curriculum '[[0,128],[0.5,256]]'
        --eval-lengths '[256,512]' --eval-samples 4 --val-tokens 4096)
  DENSE_SHAPE='{"hidden":64,"layers":2,"ffn":128}'
  MOE_SHAPE=${MOE_SHAPE:-'{"hidden":64,"layers":2,"ffn":64}'}
else
  ARGS=(--seconds "${TRAIN_SECONDS:-330}")
  DENSE_SHAPE='{}'
  MOE_SHAPE='{}'
fi
MOE_ARGS=()
if [[ $STAGE == moe ]]; then
  # The from-scratch MoE of stage 1 learnt language and keyword events but not retrieval in
  # 330 s; taking the dense model's embeddings and attention lets it spend its time on experts.
  MOE_ARGS=(--init-from "${INIT_FROM:-models/llm/dense}" --p-retrieval 0.35 --lr 1.5e-3)
  [[ "${SMOKE:-0}" == 1 ]] || MOE_SHAPE='{"layers":6,"ffn":64}'  # the dense model's depth
  [[ "${SMOKE:-0}" == 1 ]] || MOE_ARGS+=(--seconds "${TRAIN_SECONDS:-270}"
                                         --curriculum '[[0,1024],[0.25,2048],[0.5,4096],[0.7,8192]]')
fi

{
  date -u
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, transformers, tokenizers; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'tokenizers', tokenizers.__version__, 'cuda', torch.cuda.is_available())"
  ls -la .llmdata
} 2>&1 | tee "$R/log.txt"

# Both models share the GPU: each is small, so running them side by side overlaps their launch
# overheads and the host-side batch building.
set +e
RC_D=0
if [[ $STAGE != moe ]]; then
  timeout 520 $PY -m llm.train.trainer --kind dense --out "$R" --shape "$DENSE_SHAPE" "${ARGS[@]}" \
    > "$R/dense_log.txt" 2>&1 &
  PID_D=$!
fi
timeout 520 $PY -m llm.train.trainer --kind moe --out "$R" --shape "$MOE_SHAPE" "${ARGS[@]}" "${MOE_ARGS[@]}" \
  > "$R/moe_log.txt" 2>&1 &
PID_M=$!
[[ $STAGE != moe ]] && { wait $PID_D; RC_D=$?; }
wait $PID_M; RC_M=$?
set -e
{
  echo "stage=$STAGE dense rc=$RC_D moe rc=$RC_M"
  cat "$R"/*_log.txt
  date -u
} 2>&1 | tee -a "$R/log.txt"
du -sh "$R"/* | tee -a "$R/log.txt"
exit $(( RC_D || RC_M ))
