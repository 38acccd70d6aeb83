# ctpipe: `make demo` runs the whole continuous-training loop, `make test` runs the tests.
# Both create .venv and install the project on first use; nothing else needs installing by hand
# except a Java 17+ runtime for Spark, which `make` checks for and explains how to install.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ctpipe-installed

# Spark workers must run the venv's interpreter, not whatever python is first on PATH.
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
export GX_ANALYTICS_ENABLED := False
export MLFLOW_ENABLE_TELEMETRY := false
export FEAST_USAGE := False

.PHONY: demo test lint typecheck unit bench compile docs clean java help lock wheelhouse images release test-containers test-cluster components-yaml

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

java:  ## Check that Java 17+ (needed by Spark) is installed.
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	if [ -z "$$v" ] || [ "$$v" -lt 17 ]; then \
	  echo "Spark needs Java 17 or newer (found: $${v:-none})."; \
	  echo "Install it with:  sudo apt-get install -y openjdk-17-jre-headless   (Debian/Ubuntu)"; \
	  echo "             or:  brew install openjdk@17                            (macOS)"; \
	  exit 1; fi

demo: $(STAMP) java  ## Run the whole CT loop on the embedded default.
	$(BIN)/ctpipe demo

lint: $(STAMP)  ## ruff (style, Google docstrings) and mypy.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Two workers (one per core of the reference machine), each taking whole modules so a module's
# servers and trained fixtures are built once; the heaviest modules start first (tests/conftest.py).
TEST_WORKERS ?= 2
test: $(STAMP) java lint  ## Lint, type-check and run every test (TEST_WORKERS=1 for one process).
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

# The images: tags come from infra.images (ctpipe/<kind>:<package version>); builds are offline
# from a wheelhouse. BASE_IMAGE=... and CA_BUNDLE=proxy-ca.pem (a build secret) are optional.
WHEELHOUSE ?= out/wheelhouse
DOCKER ?= docker

lock: $(STAMP)  ## Regenerate containers/*.lock (the images' pins) from the virtualenv.
	$(BIN)/python -m pipelines.images lock

wheelhouse: $(STAMP)  ## Download every locked file, hashes checked, into $(WHEELHOUSE) (the only step that needs the index).
	$(BIN)/python -m pipelines.images wheelhouse $(WHEELHOUSE)

images: wheelhouse  ## Build the components and serving images offline from the wheelhouse; SBOMs into out/release.
	$(BIN)/python -m pipelines.images build --wheelhouse $(WHEELHOUSE) --docker $(DOCKER) \
	  $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(if $(CA_BUNDLE),--ca-bundle $(CA_BUNDLE))
	$(BIN)/python -m pipelines.release sbom

# A release by digest (docs/containers.md): REGISTRY=host:port, OVERLAY=manifests/overlays/production.
release: images  ## Push the images to $(REGISTRY) and write out/release/<overlay> naming them by digest.
	@test -n "$(REGISTRY)" || { echo "usage: make release REGISTRY=host[:port] [OVERLAY=manifests/overlays/production]"; exit 2; }
	$(BIN)/python -m pipelines.release push --registry $(REGISTRY) --docker $(DOCKER)
	$(BIN)/python -m pipelines.release pin --overlay $(or $(OVERLAY),manifests/overlays/production)
	$(BIN)/python -m pipelines.release sbom

test-containers: $(STAMP)  ## Build both images on a Debian-built base in a private dockerd and run them.
	$(BIN)/pytest tests/containers -m containers -p no:randomly

# The cluster profile without Kubernetes: every pipeline task in the components image (kfp.local's
# DockerRunner, host network), the predictor container, S3, PostgreSQL + MLflow, Redis on 127.0.0.1.
test-cluster: $(STAMP)  ## Run the cluster profile end to end in containers against real servers (docs/cluster.md).
	$(BIN)/pytest tests/cluster -m cluster -p no:randomly

bench: $(STAMP) java  ## Run the benchmarks; results are written as JSON under out/bench/.
	$(BIN)/pytest tests/benchmarks -m bench -p no:randomly -q

compile: $(STAMP)  ## Compile the pipelines to KFP IR YAML in out/.
	$(BIN)/ctpipe compile --out out

# components/yaml/<name>.yaml: each component as a KFP component YAML (naming infra.images of ctpipe.yaml)
# for pipelines that do not import ctpipe; the tests fail when one differs from the code.
components-yaml: $(STAMP)  ## Regenerate the component YAMLs in components/yaml/ from pipelines/kfp_components.py.
	$(BIN)/python -m pipelines.component_yaml

docs:  $(STAMP)  ## Regenerate the reference pages and build the docs site into out/site (warnings fail).
	$(BIN)/python -m pipelines.docgen
	$(BIN)/mkdocs build --strict

clean:  ## Remove the local workspace and build outputs (keeps .venv).
	rm -rf .workspace out
