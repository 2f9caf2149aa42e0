# scapecast: `make run` and `make test` bootstrap everything they need.
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
STAMP   := $(VENV)/.setup-stamp
ARGS    ?=
# System libraries for headless OpenGL (EGL on Mesa llvmpipe without a GPU).
GL_PKGS := libegl1 libgl1 libgl1-mesa-dri libegl-mesa0
# The browser the web viewer's tests drive headless over its DevTools protocol (WebGL2 on its own SwiftShader);
# no chromedriver: tests/test_web.py talks to Chromium directly.
BROWSER_PKGS := chromium

.PHONY: setup run test bench lint gl-libs browser clean

setup: $(STAMP) gl-libs

# Re-run the Python install only when the dependency list changes: a warm `make test` starts in seconds.
$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	# The CPU torch wheel first (an unpinned request would pull a multi-GB CUDA build), unless CUDA torch is there.
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() or torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
	  || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,vcam]'
	# Compile the solver's numba kernels now (~25 s once; cached), not on the first `make run`.
	$(PY) -m engine.solve.warm_up
	touch $(STAMP)

gl-libs:
	@if dpkg -s $(GL_PKGS) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ]; then \
	  echo "installing $(GL_PKGS)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(GL_PKGS); \
	else \
	  echo "Headless OpenGL needs system libraries. Run:"; \
	  echo "  sudo apt-get install -y $(GL_PKGS)"; exit 1; \
	fi

# Installed only when missing (once per machine); without root the browser tests skip and say how to install it.
browser:
	@if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ]; then \
	  echo "installing $(BROWSER_PKGS) (tests/test_web.py)"; { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BROWSER_PKGS); } || \
	  echo "could not install $(BROWSER_PKGS): the web viewer's browser tests will skip and say so"; \
	else \
	  echo "The web viewer's tests need Chromium and skip without it. Run:"; \
	  echo "  sudo apt-get install -y --no-install-recommends $(BROWSER_PKGS)"; \
	fi

run: setup
	$(PY) run_engine.py run $(ARGS)

test: setup browser
	$(PY) -m pytest -q $(ARGS)

bench: setup
	$(PY) run_engine.py bench $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
