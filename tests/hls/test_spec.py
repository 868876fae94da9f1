"""The generated C++ header carries the numerics spec and the layout, nothing typed by hand."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mmfree.hls import spec as SP
from mmfree.hls.csim import HEADERS, KERNEL_SOURCES, SRC_DIR
from mmfree.pymodel import layout as LY
from mmfree.pymodel import numerics as N


def _table(text: str, name: str) -> np.ndarray:
    m = re.search(name + r"\[(\d+)\] = \{(.*?)\};", text, re.S)
    assert m, name
    vals = [int(v.strip().rstrip("u")) for v in m.group(2).split(",") if v.strip()]
    assert len(vals) == int(m.group(1))
    return np.array(vals)


def test_header_has_every_numerics_constant():
    text = SP.header_text()
    consts = SP.spec_constants()
    assert "SPEC_VERSION" in consts and "ROW_ALIGN_BYTES" in consts
    for name, value in consts.items():
        m = re.search(rf"#define MMFREE_{name} (.+)", text)
        assert m, name
        assert eval(m.group(1).replace("LL", "")) == value, name   # noqa: S307 (our own generated literal)


def test_header_tables_are_the_spec_tables():
    text = SP.header_text()
    np.testing.assert_array_equal(_table(text, "MMFREE_SIGMOID_TAIL"), N.sigmoid_tail_table())
    np.testing.assert_array_equal(_table(text, "MMFREE_RSQRT_TABLE"), N.rsqrt_table())
    np.testing.assert_array_equal(_table(text, "MMFREE_TRIT_DECODE"), N.trit_decode_table().reshape(-1))


def test_layer_slots_follow_the_layout():
    names = SP.layer_tensor_names()
    dims = LY.Dims(vocab=5, d=7, inter=9, layers=3)
    in_layout = [t.name for t in LY.tensors(dims) if t.name.startswith("layers.2.")]
    assert ["layers.2." + n for n in names] == in_layout
    text = SP.header_text()
    for i, n in enumerate(names):
        assert f"#define MMFREE_LT_{SP.c_ident(n)} {i} " in text
    bls = SP.layer_bitlinears()
    assert [b.name for b in bls] == [b.name[len("layers.2."):] for b in LY.bitlinears(dims)
                                     if b.name.startswith("layers.2.")]
    for b in bls:
        assert f"#define MMFREE_LB_{SP.c_ident(b.name)}_W MMFREE_LT_{SP.c_ident(b.w)}" in text


def test_element_types_come_from_the_layout():
    dts = SP.element_dtypes()
    tensors = {t.name: t.dtype for t in LY.tensors(LY.Dims(2, 3, 4, 1))}
    assert dts["vec"] == tensors["layers.0.attn_norm.n"]
    assert dts["gate"] == tensors["layers.0.attn.one_minus_lb"]
    assert f"typedef {dts['vec']}_t mmfree_vec_t;" in SP.header_text()


def test_tap_layout():
    offs = SP.tap_offsets(d=7, inter=11)
    assert list(offs) == [n for n, _ in SP.LAYER_TAPS]
    assert offs["mlp.gate_proj"][1] == 22
    assert sum(n for _, n in offs.values()) == SP.tap_words(7, 11)


def test_no_numbers_retyped_in_the_sources():
    """The C++ sources take table contents and spec constants from mmfree_spec.h only."""
    for name in HEADERS + KERNEL_SOURCES:
        text = (SRC_DIR / name).read_text()
        for big in (str(int(N.sigmoid_tail_table()[1])), str(int(N.rsqrt_table()[0])), "2147483648"):
            assert big not in text, (name, big)


def test_limit_defines():
    d = SP.limit_defines(63, 1000)
    assert d == {"MMFREE_MAX_D": 63, "MMFREE_MAX_I": 1000, "MMFREE_MAX_KBUF": 1000, "MMFREE_MAX_ROWS": 2000,
                 "MMFREE_MAX_ROW_BYTES": 200}
    with pytest.raises(ValueError, match="max_d"):
        SP.limit_defines(0, 10)
    with pytest.raises(ValueError, match="MAX_K"):
        SP.limit_defines(10, N.MAX_K + 1)
