"""No silent wrong answer from a tampered image: every byte of an image is covered (digest over the
manifest + weights checksum), every constant is range-checked against the numerics spec, packed bytes are
valid codes; a consumer (`generate --backend int`, `sim`) gets one clear error (issue 22, item 2)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmfree.cli import main
from mmfree.pymodel import imagecheck as IC
from mmfree.pymodel import numerics as N
from mmfree.pymodel.intmodel import ImageError, IntModel


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    from mmfree.pymodel.export import export_model
    from tests.pymodel.helpers import random_model

    out = tmp_path_factory.mktemp("img") / "img"
    export_model(random_model(2, vocab_size=40, hidden_size=20, num_hidden_layers=1, intermediate_size=32), out)
    return out


def copy(image: Path, tmp_path: Path) -> Path:
    d = tmp_path / "copy"
    shutil.copytree(image, d)
    return d


def manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def save(d: Path, m: dict, reseal: bool) -> None:
    """Write manifest ``m``; with ``reseal`` recompute every checksum so that only the range checks can
    catch the change (an attacker's or a buggy tool's consistent image)."""
    if reseal:
        blob = (d / "weights.bin").read_bytes()
        for t in m["tensors"].values():
            if isinstance(t, dict) and isinstance(t.get("offset"), int) and isinstance(t.get("nbytes"), int):
                t["sha256"] = hashlib.sha256(blob[t["offset"]:t["offset"] + t["nbytes"]]).hexdigest()
        m["weights_sha256"] = hashlib.sha256(blob).hexdigest()
        m[IC.DIGEST_KEY] = IC.manifest_digest(m)
    (d / "manifest.json").write_text(json.dumps(m))


def test_export_seals_the_manifest(image):
    m = manifest(image)
    assert m[IC.DIGEST_KEY] == IC.manifest_digest(m)
    IntModel.load(image)


@pytest.mark.parametrize("reseal", [False, True])
def test_swapped_tensor_offsets_refused(image, tmp_path, reseal):
    d = copy(image, tmp_path)
    m = manifest(d)
    a, b = m["tensors"]["layers.0.attn.i_proj.nw"], m["tensors"]["layers.0.attn.f_proj.nw"]
    a["offset"], b["offset"] = b["offset"], a["offset"]
    save(d, m, reseal)
    with pytest.raises(ImageError, match="layers.0.attn.i_proj.nw: offset .* the layout puts it at"):
        IntModel.load(d)


@pytest.mark.parametrize("reseal", [False, True])
@pytest.mark.parametrize("key,value", [("c_m", 0), ("c_m", -5), ("c_m", 2**40), ("c_m", 2**24), ("c_m", 1.5e7),
                                       ("c_m", True), ("c_e", 200), ("c_e", -129), ("c_e", "3"), ("K", 21),
                                       ("F_out", 3)])
def test_out_of_range_constants_refused(image, tmp_path, key, value, reseal):
    d = copy(image, tmp_path)
    m = manifest(d)
    m["bitlinears"]["layers.0.mlp.gate_proj"][key] = value
    save(d, m, reseal)
    with pytest.raises(ImageError, match=f"bitlinears.layers.0.mlp.gate_proj.{key} is .*must be"):
        IntModel.load(d)


def test_any_manifest_edit_breaks_the_digest(image, tmp_path):
    d = copy(image, tmp_path)
    m = manifest(d)
    m["source"] = "elsewhere"
    m["bitlinears"]["lm_head"]["c_m"] += 1           # still in range: only the digest can tell
    save(d, m, reseal=False)
    with pytest.raises(ImageError, match="fails its digest"):
        IntModel.load(d)


def _poke(d: Path, m: dict, name: str, index: int, value: bytes) -> None:
    raw = bytearray((d / "weights.bin").read_bytes())
    off = m["tensors"][name]["offset"] + index
    raw[off:off + len(value)] = value
    (d / "weights.bin").write_bytes(bytes(raw))


@pytest.mark.parametrize("reseal", [False, True])
def test_corrupted_weight_bytes_refused(image, tmp_path, reseal):
    d = copy(image, tmp_path)
    m = manifest(d)
    _poke(d, m, "layers.0.attn.o_proj.w", 1, bytes([250]))            # not a code (>= 243)
    save(d, m, reseal)
    with pytest.raises(ImageError, match="checksum" if not reseal else "byte 250 .* not a valid packed ternary code"):
        IntModel.load(d)


@pytest.mark.parametrize("name,value,needle", [
    ("layers.0.attn_norm.n", np.int32(2**30).tobytes(), "max \\|mantissa\\|"),
    ("layers.0.attn.one_minus_lb", np.uint32(2**31 + 1).tobytes(), "exceeds 1.0"),
    ("lm_head.w", bytes([242]) * 16, "nonzero trits in its row padding"),
])
def test_consistent_but_out_of_spec_values_refused(image, tmp_path, name, value, needle):
    d = copy(image, tmp_path)
    m = manifest(d)
    _poke(d, m, name, 0, value)
    save(d, m, reseal=True)
    with pytest.raises(ImageError, match=needle):
        IntModel.load(d)


@pytest.mark.parametrize("key", sorted(IC.SCHEMA))
def test_missing_manifest_key_refused(image, tmp_path, key):
    d = copy(image, tmp_path)
    m = manifest(d)
    del m[key]
    save(d, m, reseal=False)
    with pytest.raises(ImageError):
        IntModel.load(d)


def test_commands_refuse_a_tampered_image(image, tmp_path, capsys):
    """`generate --backend int` and `sim` stop with one error line, never `bit_exact: true` on a bad image."""
    d = copy(image, tmp_path)
    m = manifest(d)
    m["bitlinears"]["lm_head"]["c_m"] = 0
    save(d, m, reseal=True)
    for argv in (["generate", "--backend", "int", "--model", str(d), "--prompt-ids", "1", "--max-new-tokens", "2"],
                 ["sim", "--model", str(d), "--prompt-ids", "1", "--tokens", "1", "--json"]):
        assert main(argv) == 1
        err = capsys.readouterr()
        assert "lm_head.c_m is 0, must be an integer in [2**23, 2**24)" in err.err and "bit_exact" not in err.out


def test_export_refuses_a_constant_the_hardware_cannot_hold():
    from mmfree import MmfreeError
    from mmfree.pymodel.export import seal_manifest

    with pytest.raises(MmfreeError, match="c_e = -300 is outside the hardware's"):
        seal_manifest({"bitlinears": {"lm_head": {"c_e": -300}}})
    assert (N.CE_MIN, N.CE_MAX) == (-128, 127)
