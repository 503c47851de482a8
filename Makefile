# The README's commands. `make quickstart` and `make test` each set up everything they need.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MLSERVER_VENV ?= /tmp/peers
KSERVE_VENV ?= /tmp/peers-kserve

.PHONY: quickstart test lint pytest setup control-plane images cluster-up e2e bench-e2e bench-advise-knative bench-node bench-controlplane bench-operator bench-runtime bench-peers bench-loadgen crd clean

## quickstart: install Zeroserve and run its main job on the embedded default
quickstart: $(STAMP)
	$(BIN)/zeroserve quickstart

## test: build the control plane, install, lint, and run the whole test suite
test: $(STAMP) control-plane images lint pytest

pytest: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/shellcheck -x hack/*.sh bench/*.sh .ci/run

## setup: a virtualenv with Zeroserve (editable), every component's extra, and the test and dev extras
setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[all,test,dev,quickstart,aws]'
	touch $@

## images: the node's images as archives, with buildah (cached): pause, runtime, operator, and Knative's,
## Traefik's and CoreDNS's binaries from `control-plane`
images: control-plane
	hack/build-images.sh >/dev/null

## control-plane: build etcd, the Kubernetes binaries, kubectl, helm, Knative, Traefik, CoreDNS (cached, pinned)
control-plane:
	hack/build-control-plane.sh >/dev/null

## cluster-up: start the test cluster by hand with a node, Knative Serving, Traefik, CoreDNS and the operator
## from the chart; prints `export KUBECONFIG=...` and the kubectl and curl commands that run
## examples/modelservice-cpu.yaml; Ctrl-C stops it
cluster-up: $(STAMP) control-plane images
	$(BIN)/python tests/controlplane.py up --knative

## bench-controlplane: measure the control plane's cold start
bench-controlplane: $(STAMP) control-plane
	$(BIN)/python bench/controlplane_start.py

## e2e: the serverless path once, end to end: a cluster with a node and Knative, the operator from the
## chart, the example ModelService scaled from zero through the activator, the breakdown; then teardown
e2e: $(STAMP) control-plane images
	$(BIN)/python bench/e2e_coldstart.py --runs 1

## bench-e2e: scale from zero to first inference, 7 times, beside a raw-onnxruntime Knative Service
bench-e2e: $(STAMP) control-plane images
	$(BIN)/python bench/e2e_coldstart.py --runs 7

## bench-advise-knative: zeroserve advise --validate on the test cluster's Knative: predicted against
## measured cold starts and replica-seconds over an MMPP whose quiet spells straddle scale to zero
bench-advise-knative: $(STAMP) control-plane images
	$(BIN)/python bench/advise_knative.py

## bench-node: cluster start with a Ready node, and a runtime pod from create to its first inference
bench-node: $(STAMP) control-plane images
	$(BIN)/python bench/node_start.py

## bench-operator: converge 1,000 ModelServices; time and operator peak RSS
bench-operator: $(STAMP) control-plane
	$(BIN)/python bench/operator_scale.py --count 1000

## bench-runtime: the runtime server vs raw onnxruntime (apt-get install wrk nghttp2-client)
bench-runtime: $(STAMP)
	$(BIN)/python bench/runtime_throughput.py

## bench-latency: one small request at low load: the runtime vs the function stand-ins and the bare stack
bench-latency: $(STAMP)
	$(BIN)/python bench/runtime_latency.py
.PHONY: bench-latency

## bench-peers: the runtime vs MLServer and KServe (venvs: see bench/runtime_peers.py)
bench-peers: $(STAMP)
	$(BIN)/python bench/runtime_peers.py --mlserver-venv $(MLSERVER_VENV) --kserve-venv $(KSERVE_VENV)

## bench-loadgen: the load generator vs wrk and bare locust on nginx (apt-get install nginx-light wrk)
bench-loadgen: $(STAMP)
	$(BIN)/python bench/loadgen_throughput.py

## crd: regenerate crds/ from the pydantic models
crd: $(STAMP)
	$(BIN)/python -m zeroserve_operator.crd

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
