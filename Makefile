# kvmdoctor — see README.md. `make run` and `make test` work on a fresh Debian/Ubuntu machine as root.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-lab run test check check-future check-py39 lint docs bench sample-reports clean

setup:
	scripts/setup.sh

setup-lab:
	scripts/setup.sh --lab

# Exit 1 means kvmdoctor found problems and said so: that is the answer, not a make failure.
run: setup
	@$(VENV)/bin/kvmdoctor run || [ $$? -eq 1 ]

# The whole suite: lab set-up, lint, types, every test (integration ones included), then the
# unit tests again with the clock 400 days ahead: no test may depend on today's date.
test: setup-lab lint
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory check-future

# The unit tests with the clock 400 days ahead (libfaketime). KD_CLOCK_AFTER makes the suite
# fail if the clock was not in fact moved.
check-future:
	KD_CLOCK_AFTER=$$(date -d '+399 days' +%s) faketime -f +400d \
		$(PY) -m pytest -m "not integration and not timed_wait" -q -p no:cacheprovider $(PYTEST_ARGS)

# The unit tests on Python 3.9 (RHEL 9's, the oldest pyproject allows) in a venv of their own,
# made on first use from pyenv's 3.9 or python3.9 on the PATH (PY39=... names another). Not part
# of `make test`: on this kind of machine it takes about 5 minutes.
PY39 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.9*/bin/python) $(shell command -v python3.9 2>/dev/null))
VENV39 ?= .venv-py39
check-py39:
	@[ -n "$(PY39)" ] || { echo "check-py39: no Python 3.9 found; set PY39=/path/to/python3.9" >&2; exit 1; }
	@[ -x $(VENV39)/bin/python ] || $(PY39) -m venv $(VENV39)
	@[ $(VENV39)/.kvmdoctor-installed -nt pyproject.toml ] || { \
		$(VENV39)/bin/python -m pip install -q --upgrade pip && \
		$(VENV39)/bin/python -m pip install -q -e '.[test]' && touch $(VENV39)/.kvmdoctor-installed; }
	$(VENV39)/bin/python -m pytest -m "not integration" -q -p no:cacheprovider $(PYTEST_ARGS)

# The quick loop: lint, types and the unit tests only.
check: setup lint
	$(PY) -m pytest -m "not integration" -q $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check doctor checks tests bench scripts
	$(VENV)/bin/ruff format --check doctor checks tests bench scripts
	$(VENV)/bin/mypy

docs: setup
	$(PY) -m doctor.docs docs/checks.md
	$(PY) -m doctor.playbooks

sample-reports: setup
	$(PY) scripts/sample_reports.py

# Whole-process timings against their floors (docs/performance.md); `explain -` throughput when
# its benchmark is there. Both run even when the first misses a target; either missing one fails.
bench: setup-lab
	@status=0; \
	$(PY) bench/bench_cli.py --instructions || status=1; \
	if [ -f bench/bench_explain.py ]; then $(PY) bench/bench_explain.py || status=1; fi; \
	exit $$status

clean:
	rm -rf $(VENV) $(VENV39) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .sarif-tools
