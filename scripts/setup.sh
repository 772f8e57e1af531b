#!/usr/bin/env bash
# Installs everything Wakeline needs on a fresh Debian 12 machine, idempotently:
# Debian packages (Redis, TTS engines, real-speech dev data), a virtualenv in .venv with the
# package and all its extras. Torch: a CPU build of torch==2.13.0 where there is no CUDA GPU
# (an unpinned torch would pull a multi-GB CUDA build); a GPU machine keeps its own torch.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-venv redis-server espeak-ng flite sox libsndfile1 alsa-utils
              pocketsphinx-testdata klettres-data)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
VENV=${WAKELINE_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.wakeline-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
  if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
      "$VENV/bin/python" -m pip install -q "torch>=2.4"
    else
      "$VENV/bin/python" -m pip install -q torch==2.13.0
    fi
  fi
  "$VENV/bin/python" -m pip install -q -e ".[edge,server,train,dev,embedded]" 2>&1 | grep -v -i warning || true
  "$VENV/bin/python" -c "import wakeline.v1.edge_pb2, torch, onnxruntime, redis" # fail loudly if the install broke
  touch "$stamp"
fi
echo "setup: ready ($VENV)"
