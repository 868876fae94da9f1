"""Fuzz the checkpoint reader: generated corruptions of safetensors headers and bodies, config.json fields
and the shard index. Each load either refuses with one MmfreeError or returns a model that passed every
check (shapes, finite weights, config types)."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmfree import MmfreeError
from mmfree.pymodel.checkpoint import load_model
from mmfree.pymodel.config import MMFreeConfig
from tests.fuzz.helpers import fuzz, hang_guard
from tests.pymodel.helpers import random_checkpoint

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=6)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt") / "m"
    random_checkpoint(d, seed=3, vocab_size=30, hidden_size=10, num_hidden_layers=1, intermediate_size=16)
    return d


def _fresh(ckpt: Path, tmp: Path) -> Path:
    d = tmp / "m"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(ckpt, d)
    return d


def load_or_refuse(d: Path):
    """The property: MmfreeError, or a model whose parameters are all finite."""
    with hang_guard(60):
        try:
            model = load_model(d)
        except MmfreeError as exc:
            assert str(exc)
            return None
    for name, p in model.state_dict().items():
        assert p.isfinite().all(), name
    return model


@fuzz()
@given(data=st.data())
def test_safetensors_header(ckpt, tmp_path, data):
    d = _fresh(ckpt, tmp_path)
    f = d / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
    if field is None:
        header[name] = data.draw(JSON)
    else:
        header[name][field] = data.draw(JSON | st.sampled_from(["F32", "I8", "BOOL", "F64", "U8"])
                                        | st.lists(st.integers(-5, 10**12), max_size=3))
    text = json.dumps(header).encode()
    size = data.draw(st.sampled_from([len(text), len(text) + 1, 0, 2**63]))
    f.write_bytes(struct.pack("<Q", size) + text + raw[8 + n:])
    load_or_refuse(d)


@fuzz()
@given(data=st.data())
def test_safetensors_body(ckpt, tmp_path, data):
    d = _fresh(ckpt, tmp_path)
    f = d / "model.safetensors"
    raw = bytearray(f.read_bytes())
    kind = data.draw(st.sampled_from(["truncate", "flip", "append", "random"]))
    if kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    elif kind == "append":
        raw += data.draw(st.binary(min_size=1, max_size=64))
    else:
        raw = bytearray(data.draw(st.binary(max_size=256)))
    f.write_bytes(bytes(raw))
    load_or_refuse(d)


FIELDS = sorted(json.loads((Path(__file__).resolve().parents[2] / "pymodel" / "default_model" /
                            "config.json").read_text()))


@fuzz(2)
@given(edits=st.dictionaries(st.sampled_from(FIELDS), JSON, min_size=1, max_size=3),
       drop=st.lists(st.sampled_from(FIELDS), max_size=2))
def test_config_fields(edits, drop):
    """MMFreeConfig.from_dict: refused with MmfreeError, or every field has its documented type and range."""
    cfg = json.loads((Path(__file__).resolve().parents[2] / "pymodel" / "default_model" / "config.json").read_text())
    cfg.update(edits)
    for k in drop:
        cfg.pop(k, None)
    try:
        c = MMFreeConfig.from_dict(cfg)
    except MmfreeError:
        return
    assert isinstance(c.use_lower_bound, bool) and isinstance(c.tie_word_embeddings, bool)
    assert all(isinstance(getattr(c, k), int) and not isinstance(getattr(c, k), bool) and getattr(c, k) > 0
               for k in ("vocab_size", "hidden_size", "num_hidden_layers"))
    assert math.isfinite(c.rms_norm_eps) and 0 < c.rms_norm_eps < 1
    assert c.intermediate > 0


@fuzz()
@given(value=JSON)
def test_config_json_document(ckpt, tmp_path, value):
    """A whole config.json replaced by any JSON value (or a field of it): refused or loaded, never a crash."""
    d = _fresh(ckpt, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    doc = value if not isinstance(value, dict) else {**cfg, **value}
    (d / "config.json").write_text(json.dumps(doc))
    load_or_refuse(d)


@fuzz()
@given(index=JSON | st.fixed_dictionaries({"weight_map": st.dictionaries(
    st.text(max_size=20), st.sampled_from(["model.safetensors", "../m/model.safetensors", "/etc/hostname", "",
                                           ".", "config.json", "sub/../model.safetensors"]) | JSON, max_size=3)}))
def test_shard_index(ckpt, tmp_path, index):
    d = _fresh(ckpt, tmp_path)
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    load_or_refuse(d)
