# llava-ov15 — run `make help` for the targets.
# The virtualenv lives outside the clone (~/.cache/llava-ov15/venv-<hash of requirements>).
SHELL := /bin/bash
VENV = $(shell SKIP_BUILD=1 QUIET_SETUP=1 scripts/setup.sh 2>/dev/null | tail -n 1)
PY = $(VENV)/bin/python

.PHONY: help setup activate demo test test-rust test-python lint fmt bench bench-gpu wheel clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## create/reuse the cached venv and build the native extension (release)
	scripts/setup.sh

demo: setup ## demo corpus → llava-pack build → pack → tiny train → convert → eval
	$(PY) -m llava_ov15.demo --out demo-out
	@echo "demo: done. To run llava-pack and python -m llava_ov15.* yourself: source $(VENV)/bin/activate"

activate: ## print the command that puts llava-pack and the venv's python on PATH
	@echo "source $(VENV)/bin/activate"

test: setup ## all tests: Rust (cargo test) and Python (pytest)
	scripts/test.sh

test-rust: ## Rust unit, integration and property tests
	cargo test --workspace --exclude llava-ov15-native

test-python: setup ## Python tests only
	$(PY) -m pytest tests -q

lint: ## rustfmt, clippy, ruff
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches

fmt: ## format Rust and Python sources
	cargo fmt --all
	$(VENV)/bin/ruff check --fix python tests benches

bench: setup ## criterion benches + every benches/*.py (ratios against peers in the same run)
	cargo bench -p llava-packer
	for b in compare_build preprocess loader_iter pack_fill model_forward train_step \
		text_clean dedup_quality loss_memory serve_load ray_overhead ray_build ray_dedup; do \
		PYTHONPATH=python $(PY) benches/$$b.py || exit 1; done
	PYTHONPATH=python $(PY) benches/dedup_search.py --sizes 1M --faiss-max 100k

bench-gpu: setup ## trainer throughput/MFU at the 8B/4B layer shapes (needs a CUDA GPU)
	PYTHONPATH=python $(PY) benches/train_gpu.py

wheel: ## build a release wheel into dist/
	$(VENV)/bin/maturin build --release --out dist

clean: ## remove build outputs (not the cached venv)
	cargo clean
	rm -rf dist demo-out
