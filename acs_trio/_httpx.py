"""The one place that names the HTTP client library.

The design card names httpx; flake8-async (ASYNC127) now recommends httpx2, its maintained
continuation with the same API (docs/performance.md, "Earlier measurements").  Every module imports ``httpx`` from here, so
switching is this one line: ``import httpx2 as httpx``.
"""

import httpx  # noqa: ASYNC127 - named by the design card; see the module docstring

__all__ = ["httpx"]
