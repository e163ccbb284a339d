# The two quick-start commands (`make serve`, `make test`) install what they need first.
# Python packages go to .venv, the pinned node tools (anvil, solc-js) to node_modules.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: serve test install lint bench postgres-binaries geth test-tools

serve: install
	$(BIN)/jamins serve $(ARGS)

# TEST_WORKERS=0 runs the suite in this one process (what a debugger wants).
TEST_WORKERS ?= 4
test: install postgres-binaries geth test-tools
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(ARGS)

lint: install
	$(BIN)/ruff check app migrations contracts tests tools bench
	$(BIN)/ruff format --check app migrations contracts tests tools bench
	$(BIN)/mypy app tests

install: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed (Node.js 20+): apt-get install nodejs npm"; exit 1; }
	# `npm ci`: exactly the lock file, which it never rewrites (the tree stays clean).
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The benchmarks of BENCHMARKS.md (about 45 minutes: memory runs MINUTES=10 of load). Each
# starts its own anvil node, database and servers on 127.0.0.1 and writes bench/results/;
# bench/report.py prints their tables, and last here issue 13's goals, met or not.
MINUTES ?= 10
bench: install postgres-binaries
	@$(BIN)/python -c "import matplotlib" 2>/dev/null && test -x $(BIN)/py-spy || $(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@command -v wrk >/dev/null || { \
	  echo "installing wrk (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python bench/lookups.py --profile
	$(BIN)/python bench/lookups.py --db postgresql
	$(BIN)/python bench/mixed.py
	$(BIN)/python bench/mixed.py --db postgresql
	$(BIN)/python bench/registrations.py --profile
	$(BIN)/python bench/registrations.py --db postgresql
	$(BIN)/python bench/backfill.py
	$(BIN)/python bench/memory.py --minutes $(MINUTES)
	$(BIN)/python bench/report.py --goals

# The tests start their own PostgreSQL server; they need its binaries, not a running one.
postgres-binaries:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  echo "installing the PostgreSQL server binaries (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

# geth 1.13.15, the Jami chain's node, built from the Go module proxy into .geth/ (ignored)
# for the tests' geth suites; reused while `geth version` says $(GETH_VERSION). geth 1.13
# does not link with Go >= 1.23 (fjl/memsize), so the go command fetches the Go 1.21
# toolchain as a module (GOTOOLCHAIN). Without Go the geth suites are reported as skipped,
# except in CI (CI=true), where a missing geth is an error.
GETH_VERSION := 1.13.15
GETH_DIR := .geth
GETH := $(GETH_DIR)/bin/geth
GO ?= $(shell command -v go || { test -x /usr/local/go/bin/go && echo /usr/local/go/bin/go; })
geth:
	@if [ -x $(GETH) ] && $(GETH) version 2>/dev/null | grep -qx 'Version: $(GETH_VERSION)-stable'; then \
	  exit 0; \
	elif [ -z "$(GO)" ]; then \
	  if [ "$$CI" = true ]; then echo "geth: Go is needed to build geth $(GETH_VERSION) for the geth suites (CI=true)"; exit 1; fi; \
	  echo "geth: no Go toolchain (https://go.dev/dl/): the geth suites will be skipped"; \
	else \
	  echo "building geth $(GETH_VERSION) into $(GETH) (first time about 1.5 min on 2 cores, plus ~0.8 GB of downloads)"; \
	  GOTOOLCHAIN=go1.21.13 CGO_ENABLED=0 GOFLAGS=-modcacherw GOBIN=$(abspath $(GETH_DIR))/bin \
	    $(GO) install -trimpath github.com/ethereum/go-ethereum/cmd/geth@v$(GETH_VERSION) || exit 1; \
	  $(GETH) version | grep -qx 'Version: $(GETH_VERSION)-stable' || { echo "geth: $(GETH) is not $(GETH_VERSION)"; exit 1; }; \
	fi

# Tools the tests drive for real: a headless Chromium renders /docs (tests/test_docs_page.py),
# Debian's caddy runs the compose stack's Caddyfile (tests/test_caddyfile.py), its dhtnode
# the compose stack's DHT node (tests/test_compose.py), and its jami-daemon on a D-Bus of
# its own registers and looks up names (tests/test_jamid.py). Installed here, never by a test.
TEST_PACKAGES := chromium caddy dhtnode jami-daemon dbus
test-tools:
	@command -v chromium >/dev/null && command -v caddy >/dev/null && command -v dhtnode >/dev/null \
	  && command -v dbus-daemon >/dev/null && test -x /usr/libexec/jamid || { \
	  echo "installing $(TEST_PACKAGES) (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(TEST_PACKAGES) >/dev/null; }
