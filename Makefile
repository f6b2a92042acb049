# Everything runs through the project's own virtual environment, created on first use:
# on a fresh clone `make test` alone installs and tests.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The challenge data folder (any folder in the same layout works).
DATA ?= $(or $(RAKUTEN_DATA),../shared/rakuten)
export RAKUTEN_DATA := $(abspath $(DATA))
MODELS ?= models
PROTOS := $(wildcard protos/rakuten/v1/*.proto)
INSTALLED := $(VENV)/.installed
GENERATED := rakuten/v1/.generated

.DEFAULT_GOAL := help
.PHONY: help install protos test lock train-text eval-text serve-text clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

$(GENERATED): $(INSTALLED) $(PROTOS)
	rm -rf rakuten && mkdir -p rakuten/v1
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	touch rakuten/__init__.py rakuten/v1/__init__.py $@

install: $(GENERATED) ## create .venv, install pinned dependencies, generate the gRPC code

protos: $(GENERATED) ## generate Python code from protos/

test: $(GENERATED) ## run the test suite (no data folder needed)
	$(PY) -m pytest -q

lock: ## re-pin requirements.lock from the current environment
	{ sed -n '1,2p' requirements.lock; $(PY) -m pip freeze --exclude-editable | sort -f; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

train-text: $(GENERATED) ## train the text model on DATA, export a new bundle under models/text
	$(PY) -m training.train_text --data $(RAKUTEN_DATA) --models $(MODELS)

eval-text: $(GENERATED) ## F1 of the served text bundle on split == val, report in reports/text
	$(PY) -m training.evaluate_text --data $(RAKUTEN_DATA) --models $(MODELS) --report reports/text

serve-text: $(GENERATED) ## run text_service in the foreground (port 50052, metrics 9102)
	$(PY) -m text_service --models-dir $(MODELS) --log-format text

clean: ## remove generated code and caches (keeps .venv)
	rm -rf rakuten .pytest_cache .cache
