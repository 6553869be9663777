# Two commands set everything up on a fresh machine:
#   make demo   builds the embedded demo (if not built yet) and starts the app
#   make test   installs what the tests need and runs them
PYTHON_SYSTEM ?= python3
VENV          := .venv
PY            := $(VENV)/bin/python
INSTALLED     := $(VENV)/.installed
DEMO_RUN      := runs/demo
PORT          ?= 8501

.PHONY: demo demo-data test install clean-demo

$(PY):
	$(PYTHON_SYSTEM) -m venv $(VENV)

# Reinstall only when a requirements file changes.
$(INSTALLED): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $@

install: $(INSTALLED)

demo-data: install
	$(PY) -m precompute build --profile demo --out $(DEMO_RUN)

demo: demo-data
	$(PY) -m streamlit run app.py --server.headless true --server.port $(PORT) \
		--browser.gatherUsageStats false

test: install
	$(PY) -m pytest

clean-demo:
	rm -rf $(DEMO_RUN)
