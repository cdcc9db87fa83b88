"""Suite-wide switches: GPU-only tests skip without CUDA."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available on this machine")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _device_state_dir(tmp_path_factory):
    """The device's job state (its end of each model) goes to a temporary directory, never to ~/.cache."""
    import os

    previous = os.environ.get("PRIVTUNE_STATE_DIR")
    os.environ["PRIVTUNE_STATE_DIR"] = str(tmp_path_factory.mktemp("device-state"))
    yield
    if previous is None:
        os.environ.pop("PRIVTUNE_STATE_DIR", None)
    else:
        os.environ["PRIVTUNE_STATE_DIR"] = previous
