# FastInst — developer commands. `make install` is idempotent (a stamp file makes re-runs instant).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
D2_DIR := $(VENV)/detectron2-pkg
STAMP := $(VENV)/.installed

.PHONY: install test lint format quickstart clean-venv

install: $(STAMP)

$(STAMP): requirements.txt requirements-web.txt pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=24" -q
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install -r requirements-web.txt  # the web demo (Gradio) and its browser tests
	# detectron2: pure-Python code of the sal-detectron2 wheel (cp310 wheel, works on 3.11; its _C is never used)
	$(PY) -m pip install --no-deps --only-binary=:all: --python-version 3.10 --upgrade \
		--target $(D2_DIR) sal-detectron2==0.7.2
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
		echo "$(abspath $(D2_DIR))" > "$$site/sal_detectron2.pth"
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	$(PY) -c "import detectron2, fastinst; print('detectron2', detectron2.__version__, 'OK')"
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install lint
	$(VENV)/bin/pytest -q

# Generate the synthetic dataset, train a small FastInst on CPU, evaluate, draw predictions (output/quickstart).
quickstart: install
	$(PY) -m fastinst.engine.quickstart

clean-venv:
	rm -rf $(VENV)
