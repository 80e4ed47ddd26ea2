# Thin aliases of the commands documented in README.md (`pip install rust-just` provides `just`).

# The offline demo call: server + local realtime peer + ACS simulator; writes demo-out/.
demo:
    python -m pip install -e '.[demo]' && python -m acs_trio demo

# The README's test command (what .ci/run runs).
test:
    python -m pip install -e '.[dev]' && python -m ruff check . && python -m ruff format --check . && python -m mypy && python -m flake8_async --startable-in-context-manager=serve_local_peer,run acs_trio/*.py acs_trio/*/*.py acs_trio/*/*/*.py && python -m pytest

# Lint and type-check only.
lint:
    python -m ruff check . && python -m ruff format --check . && python -m mypy && python -m flake8_async --startable-in-context-manager=serve_local_peer,run acs_trio/*.py acs_trio/*/*.py acs_trio/*/*/*.py

# Run the server (reads settings from the environment; see README).
serve *ARGS:
    python -m acs_trio serve {{ARGS}}

# The load benchmark (bench/README.md).
bench *ARGS:
    python -m pip install -e '.[dev,bench]' && python bench/load.py {{ARGS}}
