"""Fixtures of the serve tests (the servers are real uvicorn servers on loopback: tests/serve/helpers.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is missing: pip install -e '.[dev]'")
pytest.importorskip("openai", reason="the dev extra is missing: pip install -e '.[dev]'")

from tests.serve.helpers import live  # noqa: E402


@pytest.fixture(scope="session")
def int_backend():
    from mmfree.serve.engine import open_backend

    return open_backend("int")


@pytest.fixture(scope="session")
def int_plain_backend():
    from mmfree.serve.engine import open_backend

    return open_backend("int", draft="none")


@pytest.fixture(scope="session")
def int_server(int_backend):
    with live(int_backend, max_tokens=256, max_queue=32) as (server, engine):
        yield server
