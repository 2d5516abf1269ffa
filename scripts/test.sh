#!/usr/bin/env bash
# Set up (idempotent) and run every test: Rust first, then Python.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="$(scripts/setup.sh | tail -n 1)"
echo "== cargo test" >&2
cargo test --workspace --exclude llava-ov15-native --quiet
echo "== pytest" >&2
"$venv/bin/python" -m pytest tests -q "$@"
