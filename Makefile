# The README's two commands: `make demo` and `make test`. Both (re)install into
# .venv first; the stamp makes a second run install nothing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
QDGAP  := $(VENV)/bin/qdgap
STAMP  := $(VENV)/.qdgap-installed
WORK   ?= work/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-slow fna bench bench-quick sif image clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV) dev
	@touch $(STAMP)

demo: $(STAMP)
	$(QDGAP) data info data/cd28se17cl22_demo.h5 2>/dev/null || $(QDGAP) --help

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(WORK) .pytest_cache
