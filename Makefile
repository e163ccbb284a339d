# The two quick-start commands (`make serve`, `make test`) install what they need first.
# Python packages go to .venv, the pinned node tools (anvil, solc-js) to node_modules.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: serve test install lint bench postgres-binaries test-tools

serve: install
	$(BIN)/jamins serve $(ARGS)

test: install postgres-binaries test-tools
	$(BIN)/python -m pytest $(ARGS)

lint: install
	$(BIN)/ruff check app migrations contracts tests
	$(BIN)/ruff format --check app migrations contracts tests
	$(BIN)/mypy app

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

# The benchmarks of BENCHMARKS.md (about 20 minutes: memory runs MINUTES=10 of load). Each
# starts its own anvil node, database and servers on 127.0.0.1 and writes bench/results/.
MINUTES ?= 10
bench: install postgres-binaries
	@$(BIN)/python -c "import matplotlib" 2>/dev/null && test -x $(BIN)/py-spy || $(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@command -v wrk >/dev/null || { \
	  echo "installing wrk (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python bench/lookups.py --profile
	$(BIN)/python bench/lookups.py --db postgresql
	$(BIN)/python bench/registrations.py
	$(BIN)/python bench/backfill.py
	$(BIN)/python bench/memory.py --minutes $(MINUTES)

# The tests start their own PostgreSQL server; they need its binaries, not a running one.
postgres-binaries:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  echo "installing the PostgreSQL server binaries (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

# Tools the tests drive for real: a headless Chromium renders /docs (tests/test_docs_page.py).
test-tools:
	@command -v chromium >/dev/null || { \
	  echo "installing chromium (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
