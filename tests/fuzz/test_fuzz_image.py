"""Fuzz the image loader: generated edits of manifest.json (any key, any JSON value, deleted keys) and of
weights.bin, with and without consistent checksums. The property (issue 22, item 2):

* without resealing, every change that is not a no-op is refused (the digest and the checksums cover every
  byte);
* with consistent checksums, the image is refused, or it is within the spec and the integer reference runs
  on it deterministically (a self-consistent image of another model is a correct result).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmfree import MmfreeError
from mmfree.pymodel import imagecheck as IC
from mmfree.pymodel.intmodel import IntModel
from tests.fuzz.helpers import fuzz, hang_guard

VALUES = (st.none() | st.booleans() | st.integers(-2**66, 2**66) | st.floats(allow_nan=False) | st.text(max_size=6)
          | st.lists(st.integers(-3, 300), max_size=3) | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    from mmfree.pymodel.export import export_model
    from tests.pymodel.helpers import random_model

    out = tmp_path_factory.mktemp("img") / "img"
    export_model(random_model(4, vocab_size=30, hidden_size=10, num_hidden_layers=1, intermediate_size=16), out)
    return out


def _paths(obj, prefix=()):
    """Every key path of a JSON object (dicts only)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))


def _reseal(d: Path, m: dict) -> None:
    blob = (d / "weights.bin").read_bytes()
    for t in m.get("tensors", {}).values() if isinstance(m.get("tensors"), dict) else []:
        try:
            t["sha256"] = hashlib.sha256(blob[t["offset"]:t["offset"] + t["nbytes"]]).hexdigest()
        except (TypeError, KeyError, ValueError):
            pass
    m["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    try:
        m[IC.DIGEST_KEY] = IC.manifest_digest(m)
    except ValueError:
        pass


def _load(d: Path):
    with hang_guard(60):
        try:
            return IntModel.load(d)
        except MmfreeError as exc:
            assert str(exc)
            return None


def _runs(im: IntModel) -> None:
    """The reference runs on an accepted image, twice with the same answer."""
    a = im.forward(im.initial_state().h, [1, 2])[1]
    b = im.forward(im.initial_state().h, [1, 2])[1]
    assert np.array_equal(a, b)


@fuzz(2)
@given(data=st.data(), reseal=st.booleans())
def test_manifest_edits(image, tmp_path, data, reseal):
    d = tmp_path / "img"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(image, d)
    m0 = json.loads((d / "manifest.json").read_text())
    m = copy.deepcopy(m0)
    path = data.draw(st.sampled_from(sorted(_paths(m), key=str)))
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    if data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(VALUES)
    if reseal:
        _reseal(d, m)
    (d / "manifest.json").write_text(json.dumps(m))
    im = _load(d)
    if im is None:
        return
    if not reseal:
        assert m == m0, f"an edit of {path} was accepted without a new digest"
    _runs(im)


@fuzz(2)
@given(data=st.data(), reseal=st.booleans())
def test_weight_bytes(image, tmp_path, data, reseal):
    d = tmp_path / "img"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(image, d)
    raw0 = (d / "weights.bin").read_bytes()
    raw = bytearray(raw0)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.integers(0, 9)) == 0:
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    (d / "weights.bin").write_bytes(bytes(raw))
    if reseal:
        m = json.loads((d / "manifest.json").read_text())
        _reseal(d, m)
        (d / "manifest.json").write_text(json.dumps(m))
    im = _load(d)
    if im is None:
        return
    if not reseal:
        assert bytes(raw) == raw0, "changed weights were accepted without new checksums"
    _runs(im)


@fuzz()
@given(text=st.text(max_size=200) | st.sampled_from(["", "{", "[]", "null", "NaN", '{"format": "mmfree-image"}']))
def test_manifest_document(image, tmp_path, text):
    d = tmp_path / "img"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(image, d)
    (d / "manifest.json").write_text(text)
    assert _load(d) is None
