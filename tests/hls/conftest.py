"""Fixtures of the HLS tests: one C-simulation library per session, random exported models."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def sim():
    from mmfree.hls.csim import CSim

    return CSim()


@pytest.fixture(scope="session")
def random_export(tmp_path_factory):
    """``random_export(seed, **config)`` -> directory of an exported random model (cached per session)."""
    from mmfree.pymodel.export import export_model
    from tests.pymodel.helpers import random_model

    cache = {}

    def make(seed: int = 0, **cfg):
        key = (seed, tuple(sorted(cfg.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("export") / "img"
            export_model(random_model(seed, **cfg), out)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def random_int_model(random_export):
    """``random_int_model(seed, **config)`` -> IntModel of an exported random model."""
    from mmfree.pymodel.intmodel import IntModel

    def make(seed: int = 0, **cfg):
        return IntModel.load(random_export(seed, **cfg))

    return make


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
