"""A released model's full width through the whole chain (issue 18): a random official-layout checkpoint of the
370M shape (d=1024, I=2816, vocab 32000; 2 of its 24 layers) -> ``mmfree export`` -> IntModel -> ``mmfree sim``,
bit-exact. The simulated DDR is sized to the image (192 MiB at 24 layers, ~150 MiB here), past the 64 MiB
a small model gets."""

import json

import pytest

from mmfree.cli import main

SHAPE_370M = dict(hidden_size=1024, intermediate_size=2816, vocab_size=32000, num_hidden_layers=2)


def official_370m_checkpoint(path):
    """A random checkpoint of the 370M shape (layers cut to 2) whose config.json has only the released keys."""
    from tests.pymodel.helpers import random_checkpoint

    random_checkpoint(path, seed=370, **SHAPE_370M)
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("bitlinear_norm_eps")
    cfg.pop("mmfree_formats", None)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.slow
def test_370m_shape_export_intmodel_sim_bit_exact(tmp_path, capsys):
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.sim.accel import SIM_MEM_BYTES
    from mmfree.sim.run import greedy_reference

    ck = official_370m_checkpoint(tmp_path / "ck")
    assert main(["export", "--model", str(ck), "--out", str(tmp_path / "img")]) == 0
    im, _ = open_int_model(str(tmp_path / "img"))
    assert (im.dims.d, im.dims.inter, im.dims.vocab, im.dims.layers) == (1024, 2816, 32000, 2)
    ref = greedy_reference(im, [1], 2)
    capsys.readouterr()
    rc = main(["sim", "--model", str(tmp_path / "img"), "--prompt-ids", "1", "--tokens", "2", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["bit_exact"] is True and res["problems"] == []
    assert res["tokens"] == ref
    assert res["model"] == {"d": 1024, "inter": 2816, "layers": 2, "vocab": 32000}
    assert res["hw"]["mem_bytes"] > SIM_MEM_BYTES          # sized to the image, past the small models' 64 MiB
    print(f"370M shape, 2 layers: {res['cycles']} cycles, {res['passes']} passes, sim wall {res['wall_s']:.0f} s")
