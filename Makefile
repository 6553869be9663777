# Two commands set everything up on a fresh machine:
#   make demo   builds the embedded demo (if not built yet) and starts the app
#   make test   installs what the tests need and runs them
PYTHON_SYSTEM ?= python3
VENV          := .venv
PY            := $(VENV)/bin/python
INSTALLED     := $(VENV)/.installed
DEMO_RUN      := runs/demo
PORT          ?= 8501

CHROMIUM      := /usr/bin/chromium

.PHONY: demo demo-data test install browser clean-demo

$(PY):
	$(PYTHON_SYSTEM) -m venv $(VENV)

# Reinstall only when a requirements file changes.
$(INSTALLED): requirements.txt requirements-dev.txt requirements-sae-vis.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-sae-vis.txt
	touch $@

install: $(INSTALLED)

demo-data: install
	$(PY) -m precompute build --profile demo --out $(DEMO_RUN)

demo: demo-data
	$(PY) -m streamlit run app.py --server.headless true --server.port $(PORT) \
		--browser.gatherUsageStats false

# Debian's chromium for the real-browser test (root on these machines; otherwise run with sudo).
browser: $(CHROMIUM)
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

# The planted-feature check and the app tests run on the demo, so the tests build it first.
test: install browser demo-data
	$(PY) -m pytest

clean-demo:
	rm -rf $(DEMO_RUN)
