# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both are idempotent: torch is installed once into .venv and never reinstalled.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
DEPS    := torch numpy pytest hypothesis pytest-xdist jsonschema ruff maturin mypy timm diffusers accelerate
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup browser build demo test lint rust-test py-test bench clean

$(VPY):
	$(PY) -m venv $(VENV)

# Installs only what is missing: a second run costs one import check.
setup: $(VPY)
	@$(VPY) -c "import torch, numpy, pytest, hypothesis, xdist, jsonschema, maturin, mypy, timm, diffusers, accelerate" \
	  2>/dev/null || $(VPY) -m pip install -q $(DEPS)
	@# tests/test_libraries.py: timm 1.0.20 (its PrefetchLoader's stream bug), beside the current one
	@[ -d $(VENV)/timm-1.0.20/timm ] || $(VPY) -m pip install -q --no-deps --target $(VENV)/timm-1.0.20 timm==1.0.20
	@command -v ruff >/dev/null || $(VPY) -m pip install -q ruff

# Only the test set-up installs a browser (the HTML report test opens the report in real
# headless Chromium); `make demo` never installs a system package.
browser:
	@command -v chromium >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium fonts-liberation; }

build: setup
	$(VPY) -m maturin develop --release -q

demo: build
	$(VPY) -m esper_lifetimes demo --report target/demo-report
	$(VPY) -m esper_lifetimes demo --trace

# stubtest imports the compiled module, so lint builds it first.
lint: build
	cargo fmt --all -- --check
	cargo clippy --all-targets -q -- -D warnings
	cargo clippy --all-targets --features python -q -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks examples
	$(VENV)/bin/ruff format --check python tests benchmarks examples
	$(VPY) -m mypy.stubtest esper_lifetimes._core --allowlist tests/stubtest-allowlist.txt

rust-test:
	cargo test -q

py-test: build browser
	$(VPY) -m pytest -q -n 2

test: lint rust-test py-test

bench: build
	$(VPY) benchmarks/bench_engine.py

clean:
	rm -rf target $(VENV)
