# The two commands (README): `make run` runs the lab series, `make test` runs the tests.
# Both create the environment first (.venv, from pyproject.toml) and fetch the system data.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
PROFILE ?=

.PHONY: env data run test clean-venv

env: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package when we can install it; otherwise labutils says where else
# it looks (LABUTILS_DATA_DIR, or a download into data/).
data:
	@if [ -d $(FMNIST) ] || [ -n "$$LABUTILS_DATA_DIR" ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
		echo "note: could not install dataset-fashion-mnist; labutils will try a download"; \
	else echo "note: no $(FMNIST): run 'sudo apt-get install dataset-fashion-mnist' or set LABUTILS_DATA_DIR"; fi

# The main job: all lab notebooks under the default profile, executed copies in runs/<time>/.
run: env data
	$(PY) -m labutils run-labs $(if $(PROFILE),--profile $(PROFILE))

test: env data
	$(PY) -m pytest

clean-venv:
	rm -rf $(VENV)
