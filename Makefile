# One command per action. Each target creates .venv and installs Kiln with the pinned
# versions in constraints.txt when needed, so any of them works first on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED ?= 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test bench lint install clean protos

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,export,tune,k8s]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## train, tune, register, serve and load-test on a local Ray (tests/demo.py)
	KILN_HOME=$${KILN_HOME:-.kiln} $(BIN)/python -m tests.demo

# From the shared folder beside the project, when it is there: the KubeRay CRDs that k8s/ is
# validated against, and the whole spoken-digit corpus (else the speech tests use the 400
# recordings that ship in kiln/data/spoken_digits).
test: export KILN_KUBERAY_CRDS ?= $(abspath $(wildcard ../shared/kuberay-crds))
test: export KILN_SPEECH_DATA ?= $(abspath $(wildcard ../shared/data/spoken-digits))
test: $(STAMP)  ## the whole suite, slow fault-injection tests included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)  ## benchmarks; figures land in bench-results/
	$(BIN)/python -m tests.benchmarks $(BENCH_ARGS)

lint: $(STAMP)  ## ruff, mypy, and the import contract (pyproject.toml: tool.importlinter)
	$(BIN)/ruff check platform tests
	$(BIN)/ruff format --check platform tests
	$(BIN)/mypy platform/kiln
	$(BIN)/lint-imports

# The gRPC stubs of the Open Inference Protocol, committed beside their .proto. Kiln's messages
# get a descriptor pool of their own: their `inference.*` names are the protocol's, and a process
# that also imports Triton's or KServe's stubs would otherwise fail with "duplicate symbol".
PROTOS := kiln/serve/replica/protos
protos: $(STAMP)  ## regenerate platform/kiln/serve/replica/protos/*_pb2*.py from the .proto
	cd platform && ../$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
		--grpc_python_out=. $(PROTOS)/open_inference.proto
	sed -i 's/_descriptor_pool.Default()/_descriptor_pool.DescriptorPool()/' \
		platform/$(PROTOS)/open_inference_pb2.py

clean:
	rm -rf $(VENV) .kiln bench-results .pytest_cache .ruff_cache .mypy_cache
