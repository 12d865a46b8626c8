# stor — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= conf/stor.dev.json
STAMP  := $(VENV)/.installed
TESTSTAMP := $(VENV)/.installed-test
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: install install-test run test bench clean

install: $(STAMP)

# Editable ("compat") install: the package and the twistd plugin are imported
# from this working tree, so an edit needs no reinstall.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e . --config-settings editable_mode=compat
	touch $@

$(TESTSTAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

install-test: $(TESTSTAMP)
	@command -v memcached >/dev/null 2>&1 || [ -x /usr/bin/memcached ] || \
	  { $(APT_GET) update -qq && $(APT_GET) install -y -qq memcached; }

run: install
	mkdir -p var/data1 var/data2 var/data3 var/data4
	$(BIN)/twistd -n --pidfile= stor --config $(CONFIG)

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	@command -v wrk >/dev/null 2>&1 || { $(APT_GET) update -qq && $(APT_GET) install -y -qq wrk; }
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
