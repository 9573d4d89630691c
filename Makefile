# The README's two commands: `make demo` and `make test`. Both (re)install into
# .venv first; the stamp makes a second run install nothing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
QDGAP  := $(VENV)/bin/qdgap
STAMP  := $(VENV)/.qdgap-installed
WORK   ?= work/demo
PYTEST_ARGS ?=

.PHONY: install demo reproduce test test-slow lint docs docs-serve fna bench bench-quick bench-gpu sif image clean constraints image-test sif-from-image device-kit

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh scripts/constraints.txt
	bash scripts/install.sh $(VENV) dev
	@touch $(STAMP)

DEMO_DATA := data/cd28se17cl22_demo.h5
DEMO_EXT  := data/cd28se17cl22_demo_ext.h5

# The main job: the whole study on the demo trajectory, ending with the report's path.
demo: $(STAMP)
	$(QDGAP) pipeline --data $(DEMO_DATA) --extended $(DEMO_EXT) --workdir $(WORK) --preset demo --members 20

# Atom importance on the demo work folder (trains the demo ensemble first if it is missing).
fna: $(STAMP)
	$(QDGAP) ensemble train --members 20 --preset demo --data $(DEMO_DATA) -o $(WORK)/runs
	$(QDGAP) fna --runs $(WORK)/runs --data $(DEMO_DATA) --every 10 -o $(WORK)/fna.h5

# The original study on its real DFT trajectory, beside its published numbers (README: "The original study,
# reproduced"). Resumable: rerun to continue. Reads the seed data in place; nothing is copied into the repository.
SEED_DATA  ?= ../shared/seed-data
ARCHIVE    ?= $(SEED_DATA)/cl_qd/structures_15001.tar.xz
LABELS     ?= $(SEED_DATA)/cl_qd/Cl_QD_elec_1-10k.csv
EXT_LABELS ?= $(SEED_DATA)/cl_qd/Cl_QD_elec_10k-15k_step_10.csv
MEMBERS    ?= 20
PRESET     ?= cpu
STRIDE     ?= 10
# A sparser pool (STRIDE=100: one label per 100 fs) gets its own work folder beside the study's.
REPRO_WORK ?= $(if $(filter 10,$(STRIDE)),work/reproduce,work/reproduce-stride$(STRIDE))
REPRO_ARGS ?=

reproduce: $(STAMP)
	$(QDGAP) reproduce --archive $(ARCHIVE) --labels $(LABELS) --ext-labels $(EXT_LABELS) \
	    --members $(MEMBERS) --preset $(PRESET) --stride $(STRIDE) --workdir $(REPRO_WORK) $(REPRO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff's lint and format checks (CI runs this before the tests); settings in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check qdgap tests bench scripts
	$(VENV)/bin/ruff format --check qdgap tests bench scripts

# The documentation site (mkdocs.yml, docs/, README: "Documentation"): the notebook tutorial
# (docs/tutorials/python.md, a jupytext notebook) executed with nbmake on the tiny preset, then the site built
# with --strict, so a broken link, a missing API reference or a failing cell fails. Result: build/site/.
DOCS_NB := build/docs-notebooks
docs: $(STAMP)
	mkdir -p $(DOCS_NB)
	$(VENV)/bin/jupytext --quiet --to ipynb --output $(DOCS_NB)/python.ipynb docs/tutorials/python.md
	$(PY) -m pytest -p no:cacheprovider -q --nbmake --nbmake-timeout=300 $(DOCS_NB)/python.ipynb
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The site on http://127.0.0.1:8000, rebuilt on every change (the notebook is shown, not executed).
docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# Side-by-side benchmarks against upstream alignn (not tests; never in CI): bench/results.md.
bench: $(STAMP)
	$(PY) bench/run_all.py

# A small smoke run of the same benchmarks: bench/_out/results-quick.md.
bench-quick: $(STAMP)
	$(PY) bench/run_all.py --quick

# On a machine with a CUDA device, under 8 minutes: bench/results-gpu.md (elsewhere it says so and does nothing).
bench-gpu: $(STAMP)
	$(PY) bench/gpu_check.py

# For a lent GPU machine without network: wheels it lacks + the real study's inputs in work/device-kit/;
# there, `bash scripts/device-run.sh` (the script says how).
device-kit: $(STAMP)
	bash scripts/device-kit.sh

clean:
	rm -rf $(WORK) .pytest_cache

# Pin every package but qdgap and torch (installed first, by its own spec) at the versions of the
# tested install; scripts/install.sh, and so both images, install through it. Rerun after an upgrade.
constraints: $(STAMP)
	{ echo "# The tested install's versions (make constraints; scripts/install.sh installs with -c this file)."; \
	  $(VENV)/bin/python -m pip freeze --exclude-editable --exclude qdgap --exclude torch; } > scripts/constraints.txt.tmp
	mv scripts/constraints.txt.tmp scripts/constraints.txt

# ---- container images (README: "Running on a cluster") -----------------------
# Both fail with one line, before doing anything, when their tool is missing.
SIF           ?= qdgap.sif
IMAGE         ?= qdgap
TORCH_VARIANT ?= cuda
SIF_FLAGS     ?=
IMAGE_FLAGS   ?=
# Lazy (=), so only the sif/image recipes pay for these shell calls.
QDGAP_VERSION = $(shell sed -n '/^\[project\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml)
# The commit the image is built from (-dirty: with uncommitted changes); `qdgap --version` reports it.
QDGAP_COMMIT ?= $(shell c=$$(git rev-parse HEAD 2>/dev/null) && { git diff --quiet HEAD -- 2>/dev/null && echo $$c || echo $$c-dirty; } || echo unknown)
_on_path      = $(shell command -v $(1) 2>/dev/null)
# An engine counts only when it answers: a docker CLI without a daemon does not.
_engine_ok    = $(if $(call _on_path,$(1)),$(shell $(1) info >/dev/null 2>&1 && echo $(1)))
_engines_seen = $(strip $(foreach e,podman docker,$(if $(call _on_path,$(e)),$(e))))

sif:
	$(if $(call _on_path,apptainer),,$(error make sif: apptainer not found on PATH; install Apptainer >= 1.2 or build where it is installed))
	apptainer build --force $(SIF_FLAGS) --build-arg TORCH_VARIANT=$(TORCH_VARIANT) --build-arg QDGAP_COMMIT=$(QDGAP_COMMIT) $(SIF) apptainer.def

image:
	$(eval _engine := $(or $(call _engine_ok,podman),$(call _engine_ok,docker)))$(if $(_engine),,$(error make image: $(if $(_engines_seen),$(_engines_seen) on PATH but $(foreach e,$(_engines_seen),'$(e) info') failed (is the daemon running?); start it or install podman,neither podman nor docker on PATH; install one) (or build the Apptainer image: make sif)))
	$(_engine) build $(IMAGE_FLAGS) -t $(IMAGE) -f Containerfile --build-arg TORCH_VARIANT=$(TORCH_VARIANT) --build-arg QDGAP_VERSION=$(QDGAP_VERSION) --build-arg QDGAP_COMMIT=$(QDGAP_COMMIT) .

# Build the Containerfile and run a small study inside it, compared with the host install's
# (scripts/image-test.sh: settings, base image, what runs). Exit 2: something to fix, said in one line.
image-test: $(STAMP)
	bash scripts/image-test.sh

# The SIF from exactly the image image-test ran: an OCI archive to copy to the cluster, and the
# one command that turns it into a SIF there (no registry, no rebuild).
TEST_IMAGE  ?= localhost/qdgap:test
OCI_ARCHIVE ?= qdgap.oci.tar
sif-from-image:
	$(eval _engine := $(or $(call _engine_ok,podman),$(call _engine_ok,docker)))$(if $(_engine),,$(error make sif-from-image: $(if $(_engines_seen),$(_engines_seen) on PATH but $(foreach e,$(_engines_seen),'$(e) info') failed (is the daemon running?); start it or install podman,neither podman nor docker on PATH; install podman) and run make image-test first))
	@$(_engine) image inspect $(TEST_IMAGE) >/dev/null 2>&1 || { echo "make sif-from-image: no image $(TEST_IMAGE); build it with make image-test (or pass TEST_IMAGE=)" >&2; exit 2; }
	$(_engine) save $(if $(filter podman,$(_engine)),--format oci-archive) -o $(OCI_ARCHIVE) $(TEST_IMAGE)
	@echo "copy $(OCI_ARCHIVE) to the cluster and run there:"
	@echo "apptainer build $(SIF) $(if $(filter podman,$(_engine)),oci-archive,docker-archive)://$(OCI_ARCHIVE)"
