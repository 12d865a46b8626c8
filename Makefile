# stor — two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= conf/stor.dev.json
STAMP  := $(VENV)/.installed
TESTSTAMP := $(VENV)/.installed-test
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get
# Bytecode is cached beside the sources, pytest's rewritten test modules too:
# with PYTHONDONTWRITEBYTECODE in the caller's environment (set on the
# development VMs) every run compiled and rewrote all ~190 test modules again,
# in each xdist worker -- about 10 s of a 33 s fast tier on a 2-core machine.
unexport PYTHONDONTWRITEBYTECODE

# Dependencies come at the versions and hashes pinned in requirements.txt
# (runtime) and requirements-test.txt (runtime + the test extra), both written
# by pip-compile (`make lock`); pip refuses any file whose hash is not listed.
# stor itself is installed after them with --no-deps, so nothing unpinned slips in.
PIP_PINNED := $(BIN)/pip install --quiet --require-hashes --no-deps
LOCK_VENV ?= .venv-lock
LOCK_TOOL := pip-tools==7.7.0
LOCK_ARGS := --quiet --generate-hashes --allow-unsafe --strip-extras \
             --no-emit-index-url --no-emit-find-links --upgrade
# twistd finds its plugins through a cache file beside them (dropin.cache);
# building it at install time, as the user who installs, means the user stor
# runs as never needs to write it (and never logs "Unable to write to plugin cache").
PLUGIN_CACHE := from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))

.PHONY: install install-test run typecheck test test-fast test-acceptance bench bench-tools bench-compare lock docs clean

install: $(STAMP)

# Editable ("compat") install: the package and the twistd plugin are imported
# from this working tree, so an edit needs no reinstall.
$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(PIP_PINNED) -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e . --config-settings editable_mode=compat
	$(BIN)/pip check
	$(BIN)/python -c "$(PLUGIN_CACHE)"
	touch $@

$(TESTSTAMP): $(STAMP) requirements-test.txt
	$(PIP_PINNED) -r requirements-test.txt
	$(BIN)/pip check
	@# warm the caches the first test run would otherwise fill: a collection imports
	@# every test module (pytest writes them rewritten) and the stor modules they import
	$(BIN)/python -m pytest $(UNUSED_PLUGINS) --collect-only -q -p no:cacheprovider >/dev/null
	touch $@

# The peers the tests talk to: memcached, nginx and HAProxy (started per test
# by the tests themselves; the fleet tests run the balancer configs in conf/),
# the FUSE fault layer's build and mount (fuse3, libfuse3-dev, pkg-config, gcc:
# tests/support/faultfs.py),
# Ceph's RADOS Gateway (a one-OSD cluster the S3 tests start on loopback,
# tests/support/rgw.py)
# and a RabbitMQ broker on 127.0.0.1:5672 (the machine's own; installed and
# started here only when absent).
install-test: $(TESTSTAMP)
	@command -v memcached >/dev/null 2>&1 || [ -x /usr/bin/memcached ] || \
	  { $(APT_GET) update -qq && $(APT_GET) install -y -qq memcached; }
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || \
	  { $(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends nginx; }
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || \
	  { $(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends haproxy; }
	@command -v systemd-analyze >/dev/null 2>&1 || \
	  { $(APT_GET) update -qq && $(APT_GET) install -y -qq systemd; }
	@command -v strace >/dev/null 2>&1 || \
	  { $(APT_GET) update -qq && $(APT_GET) install -y -qq strace; }
	@{ command -v gcc && command -v pkg-config && command -v fusermount3 && \
	   pkg-config --exists fuse3; } >/dev/null 2>&1 || \
	  { $(APT_GET) update -qq && \
	    $(APT_GET) install -y -qq --no-install-recommends fuse3 libfuse3-dev pkg-config gcc; }
	@command -v radosgw >/dev/null 2>&1 || [ -x /usr/bin/radosgw ] || \
	  { $(APT_GET) update -qq && \
	    $(APT_GET) install -y -qq --no-install-recommends ceph-mon ceph-osd radosgw ceph-common; }
	@if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then \
	  command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || \
	    { $(APT_GET) update -qq && $(APT_GET) install -y -qq rabbitmq-server; }; \
	  echo "starting RabbitMQ for the tests"; \
	  rabbitmq-server -detached; rabbitmqctl await_startup --timeout 120; \
	fi

run: install
	mkdir -p var/data1 var/data2 var/data3 var/data4
	$(BIN)/twistd -n --pidfile= stor --config $(CONFIG)

# mypy: the whole package, the store, disk tier and core strictly ([tool.mypy]
# in pyproject.toml); `make test` runs it before the tests.
typecheck: install-test
	$(BIN)/python -m mypy

# Two tiers (tests/support/tiers.py): the fast one (no process started, no peer,
# no real fault; well under 30 s: the inner loop) and the acceptance one (real
# stor processes, memcached, moto, RabbitMQ, nginx, HAProxy, tmpfs faults).
# `make test` runs mypy, then both, the fast one first. E.g. PYTEST_ARGS="tests/disk -x".
# test-fast tries 20 examples per property (Hypothesis profile "fast"); test, 100.
test: install-test typecheck
	$(MAKE) --no-print-directory test-fast HYPOTHESIS_PROFILE=default
	$(MAKE) --no-print-directory test-acceptance

# Third-party pytest plugins no test uses, not loaded (schemathesis' alone costs
# a second and a half of every run's start; test_openapi.py imports schemathesis itself).
UNUSED_PLUGINS := -p no:schemathesis -p no:anyio
HYPOTHESIS_PROFILE ?= fast
# Three processes (pytest-xdist): the fast tier waits on sockets and threads about as
# long as it computes, so its waits overlap (measured on the 2-core machine: 40 s on one
# process, 30 s on two, 27 s on three, 30 s on four).
FAST_WORKERS ?= 3
test-fast: $(TESTSTAMP)
	$(BIN)/python -m pytest $(UNUSED_PLUGINS) -m "not acceptance" -n $(FAST_WORKERS) --hypothesis-profile=$(HYPOTHESIS_PROFILE) $(PYTEST_ARGS) \
	  || [ $$? -eq 5 ]  # 5: PYTEST_ARGS chose no test of this tier

test-acceptance: install-test
	$(BIN)/python -m pytest $(UNUSED_PLUGINS) -m acceptance $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The benchmark tools, installed only when missing: wrk (many small GETs) and
# nginx (the big-GET ceiling; run by the bench as its own child process).
bench-tools:
	@command -v wrk >/dev/null 2>&1 || { $(APT_GET) update -qq && $(APT_GET) install -y -qq wrk; }
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || \
	  { $(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends nginx; }

# stor next to its ceilings, 5 alternating rounds (docs/benchmarks.rst). The test
# extra brings moto's server, the S3 of the write-through row. E.g.
# BENCH_ARGS="--rss-upload 4GiB" or "--rows get4k,post4m --rounds 9".
BENCH_ARGS ?=
bench: $(TESTSTAMP) bench-tools
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Re-resolve every dependency (newest versions allowed by pyproject.toml) with
# pip-compile in a throw-away venv and pin them with their hashes; the test set
# is resolved within the runtime pins, so the two files never disagree.
# Review the diff, run `make test`, commit.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet $(LOCK_TOOL)
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile $(LOCK_ARGS) \
	    -o requirements.txt pyproject.toml
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile $(LOCK_ARGS) \
	    --extra test -c requirements.txt -o requirements-test.txt pyproject.toml
	rm -rf $(LOCK_VENV) build

# This tree against an older build: BASE=<git ref> (checked out into a reused
# worktree with its own venv) or BASE_DIR=<checkout with its .venv>.
BASE ?=
BASE_DIR ?=
COMPARE_ARGS ?=
bench-compare: install bench-tools
	@if [ -n "$(BASE_DIR)" ]; then base="--base-dir $(BASE_DIR)"; \
	elif [ -n "$(BASE)" ]; then base="--base $(BASE)"; \
	else echo "usage: make bench-compare BASE=<git ref> | BASE_DIR=<checkout with .venv>"; exit 2; fi; \
	$(BIN)/python bench/compare.py $$base $(COMPARE_ARGS)

# The generated references in docs/ (configuration from stor/config/schema.json,
# HTTP API from stor/http/openapi.json); tests/test_docs.py fails while they differ.
docs:
	$(PYTHON) tools/gendocs.py

clean:
	rm -rf $(VENV) $(LOCK_VENV) var .pytest_cache .hypothesis .mypy_cache
