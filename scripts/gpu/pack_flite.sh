#!/usr/bin/env bash
# Pack the Debian Flite binary and the libraries it links (voices included) into .tts/flite.tar.xz
# (git-ignored, ~13 MB) so that scripts/gpu/train_kws.sh can synthesize with Flite on a machine
# that cannot install packages. Run from the repo root on a machine with `flite` installed.
set -euo pipefail
command -v flite >/dev/null || { echo "pack_flite: flite is not installed (apt-get install flite)" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/bin" "$TMP/lib" .tts
cp "$(command -v flite)" "$TMP/bin/"
for lib in $(ldd "$(command -v flite)" | awk '/libflite|libasound/ {print $3}'); do cp -L "$lib" "$TMP/lib/"; done
tar -C "$TMP" -cJf .tts/flite.tar.xz .
ls -la .tts/flite.tar.xz
