"""Audio shipped with the package; ASSETS.md says how each file was made and its licence.

Located next to this module rather than through ``importlib.resources.files("acs_trio")``: on
Python 3.11 an editable install can hand back a ``MultiplexedPath`` whose ``joinpath`` refuses
nested parts ("MultiplexedPath only supports directories").  Package data is installed beside the
modules (pyproject ``package-data``), so this path is right for a wheel and for a checkout.
"""

from pathlib import Path

__all__ = ["asset_path"]

_HERE = Path(__file__).resolve().parent


def asset_path(name: str) -> Path:
    """The path of a shipped asset, e.g. ``asset_path("caller.wav")``."""
    return _HERE / name
