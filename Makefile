# OCM — two-command quickstart: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
RUNSTAMP := $(VENV)/.installed
GUISTAMP := $(VENV)/.installed-gui
# A text font, Japanese and emoji for the font test and the screenshots (Qt's fallback
# finds the last two).
GUI_FONT_PACKAGES := fonts-dejavu-core fonts-noto-color-emoji fonts-ipafont-gothic

.PHONY: run run-gui test coverage lint bench bench-reliable bench-e2e bench-wire bench-hot bench-gui bench-percore bench-memory gui-system-libs gui-test-deps redis-server libssl-dev \
	gui-screenshots fuzz fuzz-hot chaos soak clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Runtime install: the package and its runtime dependencies (plus client/loadgen extras).
# setup.py compiles the optional C extensions (loadgen/_account.c, loadgen/_reliable.c,
# relay/_hot.c) in place; a change to a C file re-runs the install.
BUILD_INPUTS := pyproject.toml setup.py $(wildcard */_*.c)

$(RUNSTAMP): $(BUILD_INPUTS) | $(PY) libssl-dev
	$(PY) -m pip install --quiet -e '.[client,loadgen]'
	touch $@

# Dev install: everything `make test`, `make lint` and the benchmarks need.
$(STAMP): $(BUILD_INPUTS) | $(PY) libssl-dev
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(RUNSTAMP) $(GUISTAMP)

# The desktop client: the package with the gui extra (PySide6-Essentials, qasync).
$(GUISTAMP): $(BUILD_INPUTS) | $(PY) libssl-dev
	$(PY) -m pip install --quiet -e '.[gui]'
	touch $@

# Extra ocm-control flags, e.g. `make run ARGS="--tcp-port 9100 --udp-port 9101"`; the
# OCM_* environment variables work too (`OCM_TCP_PORT=9100 make run`).
ARGS ?=

run: $(RUNSTAMP)
	$(VENV)/bin/ocm-control $(ARGS)

# The cluster tests start a real redis-server. Debian's package (Redis 7) is what CI, a
# developer machine and deploy/compose.yaml's image all run; installed here when missing
# (as root, or through sudo), with `apt-get update` only if the package is not found.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends
redis-server:
	@command -v redis-server >/dev/null 2>&1 || command -v valkey-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package) for the cluster tests"; \
	  $(APT_INSTALL) redis-server >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(APT_INSTALL) redis-server >/dev/null; }; }

# relay/_hot.c verifies datagram MACs with OpenSSL 3's libcrypto (EVP_MAC "BLAKE2SMAC"):
# its headers (Debian's libssl-dev) are installed here when missing, as redis-server is,
# since `make test` requires the compiled extensions.
OPENSSL3_CHECK := printf '\043include <openssl/opensslv.h>\n\043if OPENSSL_VERSION_MAJOR < 3\n\043error\n\043endif\n' | $${CC:-cc} -E -x c - >/dev/null 2>&1
libssl-dev:
	@$(OPENSSL3_CHECK) || { \
	  echo "installing libssl-dev (OpenSSL 3 headers) for relay/_hot.c"; \
	  $(APT_INSTALL) libssl-dev >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(APT_INSTALL) libssl-dev >/dev/null; }; }

run-gui: $(GUISTAMP) gui-system-libs
	$(VENV)/bin/ocm-gui

# What Qt's platform plugins (X11 and offscreen) load from the system: `ldd` of the
# plugins themselves, each library reported "not found" mapped to its Debian package
# (client/gui/syslibs.py). Installed as root with apt-get, else named; plus one font.
gui-system-libs: $(GUISTAMP)
	@missing="$$($(PY) -m client.gui.syslibs)"; \
	fc-list 2>/dev/null | grep -q . || missing="$$missing fonts-dejavu-core"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing what Qt needs: $$missing"; \
			$(APT_INSTALL) $$missing >/dev/null 2>&1 || \
			{ apt-get update -q >/dev/null && $(APT_INSTALL) $$missing >/dev/null; }; \
		else \
			echo "Qt cannot start: run  sudo apt-get install$$missing"; exit 1; \
		fi; \
	fi

# The GUI tests: a real X server and input events for the smoke test (Xvfb, xdotool),
# an emoji font and a Japanese font for the font fallback test. Installed like
# redis-server when missing.
gui-test-deps:
	@missing=""; \
	command -v Xvfb >/dev/null 2>&1 || missing="$$missing xvfb"; \
	command -v xdotool >/dev/null 2>&1 || missing="$$missing xdotool"; \
	for font in $(GUI_FONT_PACKAGES); do \
		dpkg -s $$font >/dev/null 2>&1 || missing="$$missing $$font"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing for the GUI tests:$$missing"; \
		$(APT_INSTALL) $$missing >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -q >/dev/null && $(APT_INSTALL) $$missing >/dev/null; }; \
	fi

# make test measures coverage of wire/ (tests/coverage-wire.ini): in the pytest processes
# only, at 100 % of lines and branches, enforced (exit 2 below it).
#
# TEST_JOBS pytest workers (pytest-xdist; `auto`: one per core) each take whole test files,
# so a module's fixtures and its tests' order stay as written; the files that load the
# machine run one after the other (tests/conftest.py, HEAVY_FILES). The packages are compiled to
# bytecode first: every server, worker and client a test starts imports them, and with
# PYTHONDONTWRITEBYTECODE set each process would otherwise compile them again.
TEST_JOBS ?= auto
PYTEST_RUN = OCM_REQUIRE_EXTENSIONS=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_JOBS) \
	--dist loadgroup --durations=20
test: $(STAMP) gui-system-libs gui-test-deps redis-server
	rm -f .coverage .coverage.*
	$(PY) -m compileall -q wire runtime control relay client loadgen tests >/dev/null
	$(PYTEST_RUN) --cov --cov-config=tests/coverage-wire.ini --cov-report= tests
	$(PY) -m coverage report --rcfile=tests/coverage-wire.ini --include='wire/*' \
		--show-missing --fail-under=100

# Coverage of every package in every process the tests start too (servers, relay workers,
# loadgen processes: pyproject.toml, [tool.coverage.run]): the total must stay at or above
# COV_FLOOR % (README.md has the last figure), wire/ at 100 %. Tracing every process
# doubles the suite's CPU, so this is not make test's.
COV_FLOOR ?= 90
coverage: $(STAMP) gui-system-libs gui-test-deps redis-server
	rm -f .coverage .coverage.*
	$(PY) -m compileall -q wire runtime control relay client loadgen tests >/dev/null
	$(PYTEST_RUN) --cov --cov-report=term-missing:skip-covered tests
	@echo "total coverage, floor $(COV_FLOOR) %:"
	$(PY) -m coverage report --precision=2 --format=total --fail-under=$(COV_FLOOR)
	$(PY) -m coverage report --include='wire/*' --show-missing --fail-under=100

lint: $(STAMP)
	$(VENV)/bin/ruff check wire runtime control relay client loadgen tests setup.py
	$(VENV)/bin/mypy  # what and how strictly: [tool.mypy] in pyproject.toml

bench-wire: $(STAMP)
	$(PY) tests/bench/bench_wire.py

# The relay's hot path: the core's ns per datagram, and sendto vs sendmmsg fan-out.
bench-hot: $(STAMP)
	$(PY) tests/bench/bench_relay.py
	$(PY) tests/bench/bench_mmsg.py

# The desktop client's scrollback at 10,000 messages: ms per append and per render.
bench-gui: $(STAMP) gui-system-libs
	$(PY) tests/bench/bench_gui.py

# Refresh docs/gui-*.png (fonts for Japanese and emoji: best effort).
gui-screenshots: $(STAMP) gui-system-libs gui-test-deps
	OCM_GUI_SCREENSHOTS=docs $(PY) -m pytest -q -p no:cacheprovider tests/gui/test_screenshots.py

# The published figures: rewrites the tables of docs/performance.md and the full results in
# docs/bench/{headline,e2e,percore,memory}.json (tests/bench/docsout.py).
bench: $(STAMP)
	$(PY) -m tests.bench.capacity
	@echo "== per-core cost against the C limit =="
	$(PY) -m tests.bench.percore --update-docs $(PERCORE_ARGS)
	@echo "== memory per member =="
	$(PY) -m tests.bench.memory --update-docs $(MEMORY_ARGS)
	@echo "== reliable delivery under 5 % loss and an outage =="
	$(PY) -m tests.bench.reliable $(RELIABLE_ARGS)

# Reliable delivery (ocm1r) at 500 x 10 x 2 msg/s, 5 % loss each way, with and without a
# 3 s outage of one member per room, 3 rounds (tests/bench/reliable.py), ~10 min.
RELIABLE_ARGS ?=
bench-reliable: $(STAMP)
	$(PY) -m tests.bench.reliable $(RELIABLE_ARGS)

# OCM's highest sustained rate per core against the reference C relay (crelay),
# interleaved, and CPU per inbound datagram; tests/bench/percore.py, 15-25 min with the
# defaults. E.g. PERCORE_ARGS="--relays crelay,ocm,ocm-pure --repeat 5".
PERCORE_ARGS ?=
bench-percore: $(STAMP)
	$(PY) -m tests.bench.percore $(PERCORE_ARGS)

# Bytes per member (worker, control, tree; RSS/PSS/USS) at 100,000 members joined through
# TCRP as OCM's clients join (TLS, ocm1r), rooms keeping no history so that the figure is
# the members' own (a room's history is reported per room beside it); tests/bench/memory.py,
# about 9 minutes. MEMORY_ARGS="--tls" for ocm1 members.
MEMORY_ARGS ?= --tls --framing ocm1r --history-messages 0
bench-memory: $(STAMP)
	$(PY) -m tests.bench.memory $(MEMORY_ARGS)

# Encrypted rooms against plain rooms at the headline only (also part of `make bench`):
# E2E_PAIRS interleaved (plain, encrypted) pairs; rewrites that section of docs/performance.md
# and docs/bench/e2e.json.
E2E_PAIRS ?= 3
bench-e2e: $(STAMP)
	$(PY) -m tests.bench.e2e_compare --pairs $(E2E_PAIRS) --docs docs

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache */_*.so \
		.coverage .coverage.*

# Hardening (docs/security.md). fuzz: FUZZ_RUNS inputs through every codec and core
# (atheris if it installed, else the stdlib mutation engine). chaos: the full 1,000,000-
# datagram flood, then SIGKILL a worker every 5 s under the headline load. soak: the
# headline load for SOAK_MINUTES, memory and descriptors sampled every minute.
# fuzz-hot: FUZZ_HOT_STEPS steps of the differential fuzz target (the compiled hot loop
# against Python, every delivery and state compared) on an ASan/UBSan build of
# relay/_hot.c (needs cc; about 130 steps a second, so the default takes about 25
# minutes); a 1,500-step run is part of `make test` (tests/fuzz/test_fuzz_hot.py).
FUZZ_RUNS ?= 1000000
FUZZ_HOT_STEPS ?= 200000
FUZZ_HOT_SEED ?= 1
SOAK_MINUTES ?= 10

fuzz: $(STAMP)
	$(PY) -m tests.fuzz.fuzz_main --runs $(FUZZ_RUNS)

fuzz-hot: $(STAMP)
	$(PY) -m tests.fuzz.fuzz_hot --sanitize --steps $(FUZZ_HOT_STEPS) --seed $(FUZZ_HOT_SEED)

chaos: $(STAMP)
	OCM_FLOOD_DATAGRAMS=1000000 $(PY) -m pytest -q -s -p no:cacheprovider tests/integration/test_floods.py -k random_datagram
	$(PY) -m tests.stress.chaos

soak: $(STAMP)
	$(PY) -m tests.stress.soak --minutes $(SOAK_MINUTES)
