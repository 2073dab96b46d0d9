# Two commands on a fresh machine: `make run` and `make test`. Each sets up
# everything it needs (Debian packages, a virtual environment, the Python
# dependencies) and is safe to run again.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# A Mailman 3 core for the list-owner tests, in a virtual environment of its
# own: it pins click and SQLAlchemy to versions quotad must not be held to.
MAILMAN_VENV := .venv-mailman
MAILMAN_STAMP := $(MAILMAN_VENV)/.installed-stamp
MAILMAN_REQUIREMENTS := tests/mailman-requirements.txt
DEMO := var/demo
# What the tests use from Debian: du (the benchmark's baseline), mount (a
# second filesystem inside a scanned tree), pg_isready/psql (the ledger tests),
# dovecot/doveadm (the oracle for the maildir scanner's message counts; the
# tests run it from a config of their own, never the system's service),
# OpenAFS's servers and vos/afsio/pts (tests/afs_cell.py starts a -noauth
# test cell on loopback for the afs scanner; never openafs-modules-dkms: no
# kernel client is needed), mariadb-admin (to see that MariaDB answers),
# systemd-analyze (deploy/'s units are verified by the tests), chromium (the
# page tests drive it headless through playwright, which then downloads no
# browser of its own), fonts-liberation (legible text in its screenshots).
DEBIAN_PACKAGES := coreutils util-linux findutils postgresql-client dovecot-core \
	openafs-fileserver openafs-dbserver openafs-client mariadb-client systemd chromium fonts-liberation

.PHONY: run test lint typecheck importlint pytest deps system-deps services mailman-env bench clean

run: deps
	$(BIN)/quotad demo $(DEMO)
	$(BIN)/quotad --config $(DEMO)/quotad.toml db upgrade
	-$(BIN)/quotad --config $(DEMO)/quotad.toml scan
	$(BIN)/quotad --config $(DEMO)/quotad.toml report
	@echo
	@echo "The demo ledger is $(DEMO)/quotad.db. Try next:"
	@echo "  $(BIN)/quotad --config $(DEMO)/quotad.toml report --json"
	@echo "  $(BIN)/quotad --config $(DEMO)/quotad.toml member list"
	@echo "  $(BIN)/quotad --config $(DEMO)/quotad.toml quota set bob --soft 100MiB --hard 120MiB --reason 'more room'"
	@echo "  $(BIN)/quotad --config $(DEMO)/quotad.toml scan --json"
	@# Fresh tokens each run (the ledger keeps the old ones; `token list` shows them).
	@member=$$($(BIN)/quotad --config $(DEMO)/quotad.toml token create --member alice --label "make run") && \
	admin=$$($(BIN)/quotad --config $(DEMO)/quotad.toml token create --role admin --label "make run") && \
	echo && echo "The HTTP API is starting on http://127.0.0.1:8640 (docs at /docs; Ctrl-C stops it). Try:" && \
	echo "  curl -H \"Authorization: Bearer $$member\" http://127.0.0.1:8640/me/usage" && \
	echo "  curl -H \"Authorization: Bearer $$admin\" http://127.0.0.1:8640/report" && \
	echo "or open http://127.0.0.1:8640/ in a browser and sign in with either token." && echo
	$(BIN)/quotad --config $(DEMO)/quotad.toml serve

test: deps services lint typecheck importlint pytest

lint: deps
	$(BIN)/ruff check quotad scanners api migrations tests bench
	$(BIN)/ruff format --check quotad scanners api migrations tests bench

typecheck: deps
	$(BIN)/mypy

importlint: deps
	$(BIN)/lint-imports

pytest: deps services mailman-env
	$(BIN)/pytest

# bench/api.py, bench/billing.py and bench/pages.py need PostgreSQL on 127.0.0.1:5432 (a scratch
# database each, dropped afterwards).
bench: deps services
	$(BIN)/python bench/tree_scan.py
	$(BIN)/python bench/maildir_scan.py
	$(BIN)/python bench/afs_listing.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/billing.py
	$(BIN)/python bench/pages.py

deps: system-deps $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

mailman-env: $(MAILMAN_STAMP)

# Rebuilt only when the pins change.
$(MAILMAN_STAMP): $(MAILMAN_REQUIREMENTS)
	test -x $(MAILMAN_VENV)/bin/python || $(PYTHON) -m venv $(MAILMAN_VENV)
	$(MAILMAN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MAILMAN_VENV)/bin/python -m pip install --quiet -r $(MAILMAN_REQUIREMENTS)
	touch $(MAILMAN_STAMP)

# Installs only what is missing, so a machine that has everything pays nothing.
system-deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The ledger and database-scanner tests need PostgreSQL on 127.0.0.1:5432 and
# MariaDB on 127.0.0.1:3306; start either if it is installed but stopped.
services: system-deps
	@if ! pg_isready -q -h 127.0.0.1 -p 5432; then \
	  if command -v pg_ctlcluster >/dev/null; then \
	    for v in $$(ls /etc/postgresql 2>/dev/null); do pg_ctlcluster --skip-systemctl-redirect $$v main start || true; done; \
	  fi; \
	  for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; \
	fi
	@if ! mariadb-admin -h 127.0.0.1 -u root --connect-timeout=2 ping >/dev/null 2>&1; then \
	  if [ -x /usr/sbin/mariadbd ]; then \
	    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true; \
	  fi; \
	  for i in $$(seq 1 30); do mariadb-admin -h 127.0.0.1 -u root --connect-timeout=2 ping >/dev/null 2>&1 && break; sleep 1; done; \
	fi

clean:
	rm -rf $(VENV) $(MAILMAN_VENV) var .mypy_cache .ruff_cache .pytest_cache
