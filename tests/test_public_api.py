"""The curated top-level API (as httpx's tests/test_exported_members.py does)."""

import acs_trio


def test_all_is_exact_and_sorted() -> None:
    public = {name for name in dir(acs_trio) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(acs_trio, name)).__name__ == "module"}
    assert set(acs_trio.__all__) == public - modules
    assert acs_trio.__all__ == sorted(acs_trio.__all__)
