# The two commands: `make test` (and, with the API, `make run`). Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
ROLES_WITH_MOLECULE := $(patsubst roles/%/molecule/default/molecule.yml,%,$(wildcard roles/*/molecule/default/molecule.yml))

export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export DEPLOY_TEST_REGISTRY ?= 127.0.0.1:5099

.PHONY: help venv rig lint test test-unit test-integration molecule clean

help:
	@echo "make test     lint, unit and integration tests on a real Docker engine, molecule for every role"
	@echo "make rig      bring up the test rig only (engine, compose v2, loopback registry, test images)"
	@echo "make lint     ruff, ansible-playbook --syntax-check, ansible-lint (production profile)"

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

rig: venv
	VENV=$(VENV) DEPLOY_TEST_REGISTRY_PORT=$(lastword $(subst :, ,$(DEPLOY_TEST_REGISTRY))) tests/rig/up.sh

lint: venv
	ruff check .
	ruff format --check .
	ansible-playbook --syntax-check playbooks/*.yml
	ansible-lint --profile production playbooks/ roles/

test-unit: venv
	pytest tests/unit

test-integration: rig
	pytest tests/integration

molecule: rig
	@set -e; for role in $(ROLES_WITH_MOLECULE); do \
		echo "== molecule: $$role"; \
		(cd roles/$$role && molecule test); \
	done

test: lint test-unit test-integration molecule

clean:
	rm -rf $(VENV) var/test-rig
