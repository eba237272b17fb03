# The dev loop. `make test` is the README's test command and what CI runs.
PY ?= python3

.PHONY: test test-unit test-integration deps lint demo bench

deps:  ## redis-server, redis-sentinel and espeak-ng (Debian) and the Python packages the tests need
	@{ command -v redis-server && command -v redis-sentinel && command -v espeak-ng; } >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server redis-sentinel libsndfile1 espeak-ng; \
	  else echo "redis-server, redis-sentinel or espeak-ng is missing: sudo apt-get install redis-server redis-sentinel espeak-ng" >&2; fi; }
	$(PY) -m pip install -q -e '.[test]'

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check ocycle_dist workers
	$(PY) -m mypy ocycle_dist workers

test: deps lint  ## everything: lint, unit, contract and integration tests (the README's test command, CI)
	$(PY) -m pytest -q

test-unit:  ## the fast dev loop: no redis-server, no worker processes
	$(PY) -m pytest -q -m "not integration"

test-integration: deps  ## real redis-server and celery worker processes
	$(PY) -m pytest -q -m integration

demo:
	$(PY) -m pip install -q -e '.[demo]'
	ocycle-dist demo

bench:
	$(PY) bench/bench_core.py
	$(PY) bench/bench_celery.py
