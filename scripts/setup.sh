#!/usr/bin/env bash
# Idempotent setup: a virtualenv cached outside the clone, keyed by the requirements hash,
# plus the native extension built into it. Prints the venv path on its last line.
#   scripts/setup.sh            # deps + release build of the extension
#   SKIP_BUILD=1 scripts/setup.sh   # deps only
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LLAVA_OV15_CACHE:-$HOME/.cache/llava-ov15}"
key="$(cat "$root/requirements/dev.txt" | sha256sum | cut -c1-12)"
venv="$cache/venv-$key"
py="${PYTHON:-python3}"

if [ ! -f "$venv/.complete" ]; then
  echo "setup: creating $venv (first run downloads torch, a few GB)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$root/requirements/dev.txt"
  touch "$venv/.complete"
fi

# System tools some tests need (Java for the COCO scorer, nasm for libjpeg-turbo SIMD,
# headless Chromium + chromedriver for the web demo's browser test).
need=()
command -v nasm >/dev/null 2>&1 || need+=(nasm)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: apt-get install ${need[*]}" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null
  else
    echo "setup: warning: missing ${need[*]} (run as root or install them)" >&2
  fi
fi

if [ -z "${SKIP_BUILD:-}" ]; then
  echo "setup: building the native extension (release)" >&2
  (cd "$root" && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" \
    "$venv/bin/maturin" develop --release --quiet >&2)
fi
# Tell a newcomer how to reach `llava-pack` and `python -m llava_ov15...` themselves.
if [ -z "${QUIET_SETUP:-}" ]; then
  echo "setup: ready. To use llava-pack and python -m llava_ov15.* in your shell, run:" >&2
  echo "setup:     source $venv/bin/activate" >&2
fi
echo "$venv"
