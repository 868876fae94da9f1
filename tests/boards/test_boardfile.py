import json

import pytest

from mmfree import MmfreeError
from mmfree.boardfile import BOARD_NAMES, load_board


@pytest.mark.parametrize("name", BOARD_NAMES)
def test_shipped_boards_load(name):
    b = load_board(name)
    assert b.name == name and b.pl["lut"] > 0 and b.ddr_peak_bytes_per_s > 1e9


def test_board_facts():
    assert load_board("pynq-z2").part == "xc7z020clg400-1" and load_board("pynq-z2").family == "xc7"
    assert load_board("kv260").pl["uram"] == 64 and load_board("kv260").ddr["peak_gbps"] == 19.2
    assert load_board("zcu104").pl["bram36"] == 312


def _custom(tmp_path, **changes):
    d = json.loads(load_board("kv260").raw and json.dumps(load_board("kv260").raw))
    for k, v in changes.items():
        if "." in k:
            a, b = k.split(".")
            if v is None:
                d[a].pop(b)
            else:
                d[a][b] = v
        elif v is None:
            d.pop(k)
        else:
            d[k] = v
    p = tmp_path / "b.json"
    p.write_text(json.dumps(d))
    return f"custom:{p}"


def test_custom_board_loads(tmp_path):
    assert load_board(_custom(tmp_path, name="mine")).name == "mine"


@pytest.mark.parametrize("changes,needle", [
    ({"ddr.peak_gbps": 25.6}, "ddr.peak_gbps"),
    ({"part": None}, "missing field 'part'"),
    ({"pl.dsp": -3}, "pl.dsp"),
    ({"hp_ports": {"width_bits": 96}}, "hp_ports.width_bits"),
    ({"family": "virtex"}, "family"),
])
def test_bad_board_files_name_the_field(tmp_path, changes, needle):
    with pytest.raises(MmfreeError, match=needle):
        load_board(_custom(tmp_path, **changes))


def test_unknown_board():
    with pytest.raises(MmfreeError, match="unknown board"):
        load_board("de10-nano")
