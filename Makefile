# The dev loop. `make demo` and `make test` are the README's two commands and what CI runs (.ci/run).
#
# Both work with nothing but the system Python (Debian 12, Raspberry Pi OS, Ubuntu 24.04), which refuses
# `pip install` outside a virtualenv (PEP 668): they make one in .venv with `python3 -m venv` and install
# into it. Run as root, every missing system package is installed with apt-get (python3-venv when the venv
# cannot be made, python3-dev for the C hot path, redis-server, PortAudio...); each apt step runs only when
# something is missing, so running them again changes nothing. Not root: they say what to install.
# the interpreter the virtualenv is made from, and where it goes
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_GET ?= apt-get
APT_INSTALL = DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq --no-install-recommends

.PHONY: test test-unit test-integration test-deploy deps venv system-deps lint demo bench bench-live clean-venv

venv: $(PY)  ## the virtualenv, made from $(PYTHON)

$(PY):
	@if ! $(PYTHON) -m venv $(VENV) >/dev/null 2>&1; then \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v $(APT_GET) >/dev/null; then \
	    echo "$(PYTHON) -m venv failed: installing python3-venv" >&2; \
	    $(APT_GET) update -qq && $(APT_INSTALL) python3-venv && $(PYTHON) -m venv $(VENV); \
	  else echo "$(PYTHON) cannot make a virtualenv: sudo apt-get install python3-venv" >&2; exit 1; fi; \
	fi
	@$(PY) -m pip --version >/dev/null
	@echo "made $(VENV) from $$($(PYTHON) -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# Python.h, for write()'s C hot path (optional: without it the same code runs in Python)
$(VENV)/.headers: | $(PY)
	@$(PY) -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" || { \
	  if [ "$$(id -u)" = 0 ] && command -v $(APT_GET) >/dev/null; then $(APT_GET) update -qq && $(APT_INSTALL) python3-dev gcc libc6-dev; \
	  else echo "Python.h is missing (sudo apt-get install python3-dev): the C hot path will not be built" >&2; fi; }
	@touch $@

$(VENV)/.installed-%: pyproject.toml $(VENV)/.headers | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[$*]'
	@touch $@

# age: the age CLI, which reads the encrypted archive back (the tests decrypt the workers' files with it)
system-deps:  ## redis-server, redis-sentinel, espeak-ng, PortAudio, JACK and age (Debian), for the integration tests
	@{ command -v redis-server && command -v redis-sentinel && command -v espeak-ng && command -v jackd && command -v age && { ldconfig -p 2>/dev/null || /sbin/ldconfig -p; } | grep -q libportaudio; } >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v $(APT_GET) >/dev/null; then $(APT_GET) update -qq && $(APT_INSTALL) \
	    redis-server redis-sentinel libsndfile1 espeak-ng libportaudio2 jackd2 age; \
	  else echo "missing: sudo apt-get install redis-server redis-sentinel espeak-ng libportaudio2 jackd2 age" >&2; fi; }

deps: system-deps $(VENV)/.installed-test  ## the system packages and the virtualenv the tests need

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check ocycle_dist workers
	$(PY) -m mypy ocycle_dist workers

test: deps lint  ## everything: lint, unit, contract and integration tests (the README's test command, CI)
	$(PY) -m pytest -q

test-unit: $(VENV)/.installed-test  ## the fast dev loop: no redis-server, no worker processes
	$(PY) -m pytest -q -m "not integration" tests/unit tests/contract  # integration/, deploy/: not even imported

test-integration: deps  ## real redis-server and celery worker processes
	$(PY) -m pytest -q -m integration

# The deployment for real (CI runs it after `make test`; root, minutes): installs Docker and Compose when
# missing, starts a daemon when none runs, makes the base images from Debian packages when they cannot be
# pulled, builds, runs docker-compose.yml and docker-compose.ha.yml with their faults. tests/deploy/.
test-deploy: $(VENV)/.installed-test
	OCYCLE_DEPLOY_TEST=1 $(PY) -m pytest -q tests/deploy

demo: $(VENV)/.installed-demo  ## the main job (the README's first command)
	@command -v redis-server >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v $(APT_GET) >/dev/null || \
	  { $(APT_GET) update -qq && $(APT_INSTALL) redis-server libsndfile1; }
	$(VENV)/bin/ocycle-dist demo

bench: $(VENV)/.installed-test
	$(PY) bench/bench_core.py
	$(PY) bench/bench_celery.py
	$(MAKE) bench-live

bench-live: $(VENV)/.installed-test  ## the live microphone: three consumers at 20x real time, the workers away (~3 min)
	$(PY) bench/bench_live.py

clean-venv:
	rm -rf $(VENV)
