"""The streaming export (tensor by tensor from safetensors) writes the same image as the in-memory export."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmfree.cli import main
from mmfree.pymodel.checkpoint import load_model
from mmfree.pymodel.export import export_checkpoint, export_model

from .helpers import random_checkpoint

#: sha256 of the embedded default model's weights.bin (spec v1, format v1). It changes only when the
#: model, the numerics spec or the layout changes; then every figure recorded from the image must be rechecked.
DEFAULT_IMAGE_SHA256 = "4a9a1deac07d805a190810d4c33029bbe867dfd7e313f17a6082190cc6555303"
#: ``image_sha256`` of the default model's manifest (covers weights_sha256 and every c_m/c_e). It moved when
#: mean|w| became exact: torch's float32 mean had rounded 12 of the 25 matrices' scales one ulp away from the
#: exact mean, so their c_m moved by 1 LSB (weights.bin, i.e. every ternary code, stayed the same).
DEFAULT_MANIFEST_SHA256 = "2222ddae7e86d8f468b644a559f834323955bd5d9f1ece88c009cfebbb9054c6"


def test_default_image_digest(tmp_path):
    export_checkpoint("default", tmp_path / "img")
    m = json.loads((tmp_path / "img" / "manifest.json").read_text())
    assert m["weights_sha256"] == DEFAULT_IMAGE_SHA256
    assert m["image_sha256"] == DEFAULT_MANIFEST_SHA256


@pytest.mark.parametrize("dtype,sharded,tied", [(None, False, False), (torch.bfloat16, True, False),
                                                (torch.float16, False, True)])
def test_streaming_equals_in_memory(tmp_path, dtype, sharded, tied):
    ck = random_checkpoint(tmp_path / "ck", seed=7, dtype=dtype, num_hidden_layers=3, tie_word_embeddings=tied)
    if sharded:   # one shard per layer + the rest, listed by an index, as Hugging Face writes large models
        sd = load_file(str(ck / "model.safetensors"))
        (ck / "model.safetensors").unlink()
        shards, weight_map = {}, {}
        for k, v in sd.items():
            name = f"s-{k.split('.')[2]}.safetensors" if k.startswith("model.layers.") else "s-rest.safetensors"
            shards.setdefault(name, {})[k] = v
            weight_map[k] = name
        for name, part in shards.items():
            save_file(part, str(ck / name))
        (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    streamed = export_checkpoint(str(ck), tmp_path / "a")
    in_memory = export_model(load_model(ck), tmp_path / "b")
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (streamed, in_memory))
    assert (streamed / "weights.bin").read_bytes() == (in_memory / "weights.bin").read_bytes()
    assert ma["weights_sha256"] == mb["weights_sha256"] and ma["bitlinears"] == mb["bitlinears"]
    assert ma["formats"] == mb["formats"]         # calibrated layer by layer == calibrated on the whole model


def test_export_json_reports_measured_bits(tmp_path, capsys):
    assert main(["export", "--model", "default", "--out", str(tmp_path / "img"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["bits_per_ternary_weight"] == pytest.approx(8 * s["packed_weight_bytes"] / s["ternary_weights"])
    assert s["bits_per_ternary_weight"] == 1.6      # d = 240, I = 640: rows without padding
    assert s["parameters"] == 4742560
    assert s["bits_per_parameter"] == pytest.approx(8 * s["weights_bytes"] / s["parameters"])
    assert s["weights_sha256"] == DEFAULT_IMAGE_SHA256


def test_image_independent_of_thread_count(tmp_path):
    """The export derives every quantity thread-independently: 1, 2 and 4 caller threads give the same bytes
    (torch's own mean|w| of a [5632, 1024] matrix differs between 1 and 2 threads on this machine class)."""
    ck = random_checkpoint(tmp_path / "ck", seed=11, hidden_size=256, intermediate_size=2816, num_hidden_layers=1,
                           vocab_size=300)
    before = torch.get_num_threads()
    images = []
    try:
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            images.append((export_checkpoint(str(ck), tmp_path / f"img{n}") / "weights.bin").read_bytes())
            assert torch.get_num_threads() == n          # restored after the export
    finally:
        torch.set_num_threads(before)
    assert images[0] == images[1] == images[2]
