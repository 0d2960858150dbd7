import pytest


@pytest.fixture(autouse=True)
def _demo_cache(tmp_path_factory, monkeypatch):
    """Build the embedded demo set once per session, in a temporary cache."""
    monkeypatch.setenv("BETAWEIGHTER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))

