"""The simulated PYNQ device through pynq's own stack (issue 19): the generated .hwh parsed by pynq's metadata
parser, ``pynq.Overlay`` binding ``MmfreeAccelIP`` (DefaultIP via ``bindto``), ``pynq.allocate`` buffers, the
interrupt through pynq's ``Interrupt`` -> ``_InterruptController`` -> ``UioController`` (a pty as the UIO node)
and the polling path of an overlay without the interrupt; generation bit-exact with IntModel."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from mmfree import MmfreeError
from mmfree.boardfile import load_board
from mmfree.cli import main
from mmfree.rtl import regmap as RM
from mmfree.sim.accel import DEFAULT_HW

pynq = pytest.importorskip("pynq")

PROMPT, N_TOKENS = "def ", 8


@pytest.fixture(scope="module")
def model():
    from mmfree.host.session import open_model
    from mmfree.pymodel.tokenizer import load_tokenizer
    from mmfree.sim.run import greedy_reference

    opened = open_model("default")
    _, im, tok_dir = opened
    ref = greedy_reference(im, load_tokenizer(tok_dir).encode(PROMPT), N_TOKENS)
    return opened, ref


def _parser(bit):
    from pynq.pl_server.embedded_device import RuntimeMetadataParser
    from pynqmetadata.frontends import Metadata

    p = RuntimeMetadataParser(Metadata(input=bit.with_suffix(".hwh")))
    p.refresh_hierarchy_dict()
    return p


def test_generated_hwh_is_what_pynq_reads_from_vivados(tmp_path):
    """pynq's own parser finds the accelerator at its address with the build parameters, every register of
    rtl/regmap, the interrupt pin wired through the AXI interrupt controller to pl_ps_irq0 (IRQ 121), PL clock 0
    at the achieved rate; check_hwh accepts it for the KV260 and refuses it for another part."""
    from mmfree.boards.build import CSR_BASE
    from mmfree.boards.hwh import clock_divisors, write_sim_overlay
    from mmfree.boards.pynq import check_hwh

    bit = write_sim_overlay(tmp_path, load_board("kv260"), DEFAULT_HW, 250.0)
    p = _parser(bit)
    ip = p.ip_dict["mmfree_accel_0"]
    assert ip["type"] == RM.VLNV and ip["phys_addr"] == CSR_BASE["zynqmp"] and ip["addr_range"] == 1 << RM.CSR_ADDR_BITS
    assert int(ip["parameters"]["REGMAP_VERSION"], 16) == RM.REGMAP_VERSION
    assert int(ip["parameters"]["MAX_TOKENS"]) == DEFAULT_HW.max_tokens
    assert {n: r["address_offset"] for n, r in ip["registers"].items()} == RM.OFFSET
    assert set(ip["registers"]["CONTROL"]["fields"]) == {f.name for f in RM.REG["CONTROL"].fields}
    assert p.interrupt_pins["mmfree_accel_0/interrupt"] == {"controller": "axi_intc_0", "index": 0,
                                                            "fullpath": "mmfree_accel_0/interrupt"}
    assert p.interrupt_controllers == {"axi_intc_0": {"parent": "", "index": 0, "raw_irq": 121}}
    assert clock_divisors(250.0) == (6, 1, 249.9975)
    assert p.clock_dict[0]["enable"] == 1 and p.clock_dict[0]["frequency"] == 249.9975
    info = check_hwh(bit, load_board("kv260"))
    assert info.instance == "mmfree_accel_0" and info.part == "xck26sfvc784-2lv"
    with pytest.raises(MmfreeError, match="built for the device xck26"):
        check_hwh(bit, load_board("zcu104"))
    bare = write_sim_overlay(tmp_path / "bare", load_board("zcu104"), DEFAULT_HW, 200.0, interrupt=False)
    p = _parser(bare)
    assert p.interrupt_pins == {} and p.interrupt_controllers == {} and "axi_intc_0" not in p.ip_dict
    root = ET.parse(bare.with_suffix(".hwh")).getroot()
    assert next(root.iter("SYSTEMINFO")).get("DEVICE") == "xczu7ev"
    with pytest.raises(MmfreeError, match="models a Zynq UltraScale\\+ board; the pynq-z2 has a zynq7 PS"):
        write_sim_overlay(tmp_path / "z2", load_board("pynq-z2"), DEFAULT_HW, 100.0)


def test_overlay_interrupt_path_bit_exact(model):
    """pynq.Overlay binds MmfreeAccelIP; every pass ends by an interrupt that pynq's own Interrupt machinery
    delivers (one per pass, on the loop the overlay was loaded on); PL clock 0 set by pynq's Clocks; tokens equal
    IntModel greedy decoding."""
    from pynq.interrupt import Interrupt

    from mmfree.boards.accelerator import Accelerator
    from mmfree.boards.pynq import register_pynq_driver, sim_overlay

    opened, ref = model
    before = vars(pynq.Device).get("_active_device")
    with sim_overlay() as (ov, ip, dev):
        assert pynq.Device.active_device is dev and ov.is_loaded()
        assert type(ip) is register_pynq_driver() and isinstance(ip, pynq.DefaultIP)
        assert isinstance(ip.interrupt, Interrupt) and ip.version == (RM.REGMAP_VERSION_MAJOR,
                                                                       RM.REGMAP_VERSION_MINOR)
        assert pynq.Clocks.fclk0_mhz == 249.9975
        with Accelerator.on_ip(ip, opened) as acc:
            assert acc.transport.irq is ip.interrupt and acc.transport.loop is not None
            g = acc.generate(PROMPT, N_TOKENS)
            assert g.tokens == ref
            assert dev.uio.count == len(g.passes) == dev.uio.enables      # each pass ended by its interrupt
            g2 = acc.generate(PROMPT, N_TOKENS, draft="trigram", k=4)
            assert g2.tokens == ref and dev.uio.count == len(g.passes) + len(g2.passes)
    assert vars(pynq.Device).get("_active_device") is before


def test_overlay_without_interrupt_polls_status(model):
    """An overlay whose .hwh has no interrupt controller: no ``interrupt`` attribute, the driver polls STATUS."""
    from mmfree.boards.accelerator import Accelerator
    from mmfree.boards.pynq import sim_overlay

    opened, ref = model
    with sim_overlay(interrupt=False) as (ov, ip, dev):
        assert getattr(ip, "interrupt", None) is None and dev.uio is None and "axi_intc_0" not in ov.ip_dict
        with Accelerator.on_ip(ip, opened) as acc:
            assert acc.transport.irq is None
            assert acc.generate(PROMPT, N_TOKENS).tokens == ref


def test_run_pynq_sim_json_goes_through_overlay(capsys, model, tmp_path):
    """`mmfree run --board pynq-sim --json`: Overlay / MmfreeAccelIP / interrupt, bit-exact; --bitstream loads a
    simulated build of another board (the ZCU104's, as `mmfree build` writes it under sim/)."""
    from mmfree.boards.hwh import write_sim_overlay

    _, ref = model
    rc = main(["run", "--board", "pynq-sim", "--prompt", PROMPT, "--tokens", str(N_TOKENS), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["bit_exact"] is True and res["tokens"] == ref
    assert res["ip"] == "MmfreeAccelIP" and res["wait"] == "interrupt" and res["interrupts"] == res["passes"]
    bit = write_sim_overlay(tmp_path, load_board("zcu104"), DEFAULT_HW, 200.0)
    rc = main(["run", "--board", "pynq-sim", "--bitstream", str(bit), "--prompt", PROMPT, "--tokens", "3", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["bit_exact"] is True and res["tokens"] == ref[:3] and res["overlay"] == str(bit)


def test_run_pynq_sim_bad_bitstream(capsys, tmp_path):
    """A missing --bitstream, or a real (not simulated) .bit: one clear error each, no traceback."""
    rc = main(["run", "--board", "pynq-sim", "--bitstream", str(tmp_path / "none.bit"), "--tokens", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "bitstream" in err and "does not exist" in err and "Traceback" not in err
    real = tmp_path / "mmfree_kv260.bit"
    real.write_bytes(b"\x00\x09\x0f\xf0" * 16)
    rc = main(["run", "--board", "pynq-sim", "--bitstream", str(real), "--tokens", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "is not a simulated build's bitstream" in err and "Traceback" not in err


def test_build_writes_the_simulated_overlay(tmp_path):
    """`mmfree build` (write_project) puts sim/mmfree_<board>.bit + .hwh beside the Vivado project: the .hwh
    carries the build's own parameters; a PYNQ-Z2 build has none (no simulated Zynq-7000 device)."""
    from mmfree.boards.build import config_for, write_project
    from mmfree.sim.pynq_device import read_sim_bitstream

    v = tmp_path / "accel.v"
    v.write_text("module mmfree_accel(); endmodule\n")
    cfg = config_for("kv260")
    m = write_project(cfg, tmp_path / "out", v)
    assert "sim/mmfree_kv260.bit" in m["files"] and "sim/mmfree_kv260.hwh" in m["files"]
    bit = tmp_path / "out" / "sim" / "mmfree_kv260.bit"
    assert read_sim_bitstream(bit)["hwconfig"] == cfg.hw
    assert int(_parser(bit).ip_dict["mmfree_accel_0"]["parameters"]["WEIGHT_PORTS"]) == cfg.weight_ports
    m = write_project(config_for("pynq-z2"), tmp_path / "z2", v)
    assert not any(f.startswith("sim/") for f in m["files"])


def test_six_port_build_through_the_overlay(capsys, model, tmp_path):
    """A six-weight-port KV260 build (`mmfree build --weight-ports 6`: HP0-HP3 + HPC0-HPC1): its simulated overlay's
    .hwh carries WEIGHT_PORTS 6, the driver reads 6 ports from HW_CONFIG, and a run through pynq's stack is
    bit-exact (the driver needs nothing port-specific: the extra masters only read DDR)."""
    from mmfree.boards.build import config_for
    from mmfree.boards.hwh import write_sim_overlay

    _, ref = model
    cfg = config_for("kv260", weight_ports=6)
    assert cfg.hp_ports[4:] == ["S_AXI_HPC0_FPD", "S_AXI_HPC1_FPD"]
    bit = write_sim_overlay(tmp_path, load_board("kv260"), cfg.hw, cfg.clock_mhz)
    assert int(_parser(bit).ip_dict["mmfree_accel_0"]["parameters"]["WEIGHT_PORTS"]) == 6
    assert RM.decode_hw_config(cfg.hw.hw_config_reg)["weight_ports"] == 6
    rc = main(["run", "--board", "pynq-sim", "--bitstream", str(bit), "--prompt", PROMPT, "--tokens", "3", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["bit_exact"] is True and res["tokens"] == ref[:3]
