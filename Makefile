# dicomsec.hardening: development, test and demo entry points.
#
#   make demo     bring up the lab, show it healthy, say what comes next
#   make test     lint + sanity + unit + molecule: what CI runs
#
# Both start with `setup`, which is idempotent: a second run does nothing new.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV      := .venv
BIN       := $(CURDIR)/$(VENV)/bin
PY        := $(BIN)/python
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# Molecule and ansible-lint keep caches here, not in the user's home.
export XDG_CACHE_HOME ?= $(CURDIR)/.cache

LAB       := tests/lab/lab.sh
# The Python the tools run on: Debian 12's, whose newest ansible-core is 2.19.
PYTHON    ?= python3
SCENARIOS ?= $(sort $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))
VERSION   := $(shell awk '/^version:/ {print $$2}' galaxy.yml)
SANITY_ROOT := build/sanity/ansible_collections/dicomsec/hardening

# System packages the tests use. Each is installed only if it is missing.
SYSTEM_PACKAGES := python3-venv git rsync shellcheck debootstrap dcmtk orthanc nmap nftables \
	iproute2 iptables openssl ca-certificates slapd ldap-utils python3-ldap \
	nginx libnginx-mod-stream libnginx-mod-stream-js chromium rsyslog rsyslog-gnutls
SETUP_STAMP := $(VENV)/.setup-$(shell cat requirements-dev.txt requirements.txt | sha256sum | cut -c1-12)

.PHONY: help setup system-packages venv collections lab lab-down lint sanity unit molecule test demo build package ee ee-test clean

help:
	@echo "make demo   - bring up the lab, show it healthy"
	@echo "make test   - lint, sanity, unit and molecule tests (what CI runs)"
	@echo "make setup | lint | sanity | unit | molecule | lab | lab-down | build | clean"
	@echo "make ee     - build the execution environment dicomsec/ee:<version> (no registry)"
	@echo "make ee-test - run site, verify and audit from inside it against a lab site"

setup: system-packages venv collections

# On Debian as root, install what is missing. Elsewhere, say what is missing.
# No daemon may start during the install: a freshly installed Orthanc would
# otherwise answer DICOM from anywhere with its open defaults.
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "setup: please install:$$missing" >&2; exit 1; fi; \
	echo "setup: installing$$missing"; \
	guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d; guard=1; fi; \
	trap '[ -z "$$guard" ] || rm -f /usr/sbin/policy-rc.d' EXIT; \
	DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get update -q >/dev/null; \
	DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	if [ -d /run/systemd/system ]; then systemctl disable --now orthanc slapd nginx >/dev/null 2>&1 || true; fi

venv: $(SETUP_STAMP)

$(SETUP_STAMP): requirements-dev.txt requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing pinned dev tools into $(VENV) (once)"
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt -r requirements.txt
	@rm -f $(VENV)/.setup-*
	@touch $@

# The checkout is the collection: link it where ansible.cfg's collections_path
# looks, so `ansible-doc dicomsec.hardening.<name>` works without installing.
collections:
	@mkdir -p .collections/ansible_collections/dicomsec
	@ln -sfn ../../.. .collections/ansible_collections/dicomsec/hardening

lab: setup
	$(LAB) up

lab-down:
	$(LAB) down

lint: setup
	yamllint -s .
	ansible-lint --profile production --strict

# ansible-test wants the collection at ansible_collections/<ns>/<name>: test a
# copy of the tracked (and new, unignored) files laid out that way, as a git
# repository so ansible-test sees exactly those files. It runs from its own
# venv: the sanity tests pin linters that would clash with ansible-lint's.
SANITY_VENV := .venv-sanity
GET_PIP_CACHE := $(HOME)/.ansible/test/cache/get_pip_24_2.py
sanity: setup
	@test -x $(SANITY_VENV)/bin/ansible-test || { $(PYTHON) -m venv $(SANITY_VENV) && \
	  $(SANITY_VENV)/bin/pip install -q --disable-pip-version-check "$$(grep '^ansible-core==' requirements-dev.txt)"; }
	@mkdir -p $(dir $(GET_PIP_CACHE)) && cmp -s tests/lab/ansible_test_get_pip.py $(GET_PIP_CACHE) || \
	  cp tests/lab/ansible_test_get_pip.py $(GET_PIP_CACHE)
	@rm -rf build/sanity && mkdir -p $(SANITY_ROOT)
	@git ls-files -co --exclude-standard -z | rsync -a --from0 --ignore-missing-args --files-from=- ./ $(SANITY_ROOT)/
	@cd $(SANITY_ROOT) && git init -q && git add -A
	cd $(SANITY_ROOT) && PATH=$(CURDIR)/$(SANITY_VENV)/bin:$$PATH \
	  ansible-test sanity --requirements --python 3.11 --color no

unit: setup
	@if [ -n "$$(find tests/unit tests/integration -name 'test_*.py' 2>/dev/null)" ]; then \
	  pytest -q tests/unit tests/integration; \
	else echo "unit: no tests yet"; fi

molecule: setup
	$(LAB) run -- bash -c 'failed=""; for s in $(SCENARIOS); do echo "== molecule scenario $$s"; \
	  molecule test -s $$s || failed="$$failed $$s"; done; \
	  if [ -n "$$failed" ]; then echo "molecule scenarios failed:$$failed"; exit 1; fi'

test: lint sanity package unit molecule

demo: setup
	$(LAB) up
	tests/lab/demo.sh

build: setup
	@mkdir -p build && rm -f build/dicomsec-hardening-*.tar.gz
	ansible-galaxy collection build --force --output-path build .

# What Galaxy users get: build the tarball, install it into an empty path,
# and check that ansible-galaxy lists it there.
package: build
	@rm -rf build/install && mkdir -p build/install
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/install ansible-galaxy collection install --offline \
	  -p build/install build/dicomsec-hardening-*.tar.gz
	test -f build/install/ansible_collections/dicomsec/hardening/MANIFEST.json
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/install ansible-galaxy collection list \
	  -p build/install dicomsec.hardening | grep -q "^dicomsec.hardening *$(VERSION)"
	@echo "package: build/$$(cd build && ls dicomsec-hardening-*.tar.gz) installs and lists"

# The execution environment AWX/AAP runs the collection from (docs/execution-environment.md):
# ansible-builder on the lab's local base image, from the tarball `build` makes.
ee: build
	$(LAB) run -- tests/ee/ee.sh build

# site.yml, verify.yml and audit.yml from inside that EE against a lab site of its own.
# Not part of `test`: building the EE from nothing and running it takes longer than the
# rest of CI can spare (docs/execution-environment.md has the figures).
ee-test: ee
	$(LAB) run -- pytest -q -p no:cacheprovider tests/ee

clean:
	-$(LAB) down
	rm -rf build .cache tests/output .pytest_cache
