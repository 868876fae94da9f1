"""kernels.install: which implementation each device gets, and the whole model on the Triton path."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from mmfree import MmfreeError  # noqa: E402
from mmfree.pymodel.kernels import install  # noqa: E402
from mmfree.pymodel.model import hgrn_recurrence  # noqa: E402
from tests.kernels._tol import assert_close  # noqa: E402
from tests.pymodel.helpers import random_model  # noqa: E402


def test_naive_and_auto_on_cpu_keep_the_torch_path():
    model = random_model(0, num_hidden_layers=1)
    assert install(model, "naive") == "naive torch"
    assert all(m.kernel is None for m in model.bitlinears().values())
    assert model.model.layers[0].attn.recurrence is hgrn_recurrence
    assert model.hw_kernels is None
    assert install(model, "auto", "cpu") == "naive torch"


def test_bad_choice_is_refused():
    with pytest.raises(MmfreeError, match="auto, naive or triton"):
        install(random_model(0, num_hidden_layers=1), "fast")


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(MmfreeError, match="TRITON_INTERPRET=1"):
        install(random_model(0, num_hidden_layers=1), "triton", "cpu")


def test_model_on_triton_matches_the_torch_path(device):
    """Logits and every parameter gradient of a 2-layer model: fused kernels vs the model's own path (fp32)."""
    model = random_model(0, vocab_size=97, hidden_size=60, num_hidden_layers=2, intermediate_size=84).to(device).train()
    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(0)).to(device)
    ref = model(ids)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(device)
    names = [n for n, _ in model.named_parameters()]
    ref_grads = dict(zip(names, torch.autograd.grad(ref, list(model.parameters()), g)))
    note = install(model, "triton", device)
    assert note.startswith("triton")
    assert all(m.kernel is not None for m in model.bitlinears().values())
    from mmfree.pymodel.kernels.bitlinear import bitlinear_auto

    assert all(m.kernel is bitlinear_auto for m in model.bitlinears().values())   # per-shape backward backend
    assert all(layer.attn.ifg is not None for layer in model.model.layers)         # fused i/f/g projections
    assert model.hw_kernels is not None
    out = model(ids)
    grads = torch.autograd.grad(out, list(model.parameters()), g)
    assert_close("out", out, ref, torch.float32)
    for (name, _), gr in zip(model.named_parameters(), grads):
        kind = "dnorm_w" if name.endswith("norm.weight") else ("dlb" if "lower_bounds" in name else "dw")
        assert_close(kind, gr, ref_grads[name], torch.float32)
    install(model, "naive")
    assert all(m.kernel is None for m in model.bitlinears().values())


@pytest.mark.parametrize("numerics", ["fake", pytest.param("hardware", marks=pytest.mark.slow)])
def test_train_runs_on_the_triton_kernels(tmp_path, numerics, device):
    """`mmfree train --kernels triton` (in the interpreter on a CPU, natively on a GPU): the loop, the kernels
    and the hardware-exact mode's surrogates together, two steps and a checkpoint."""
    from mmfree.pymodel.train import train
    from tests.pymodel.test_train import make_corpus, tiny

    corpus = make_corpus(tmp_path / "c")
    s = train(tiny(tmp_path / "o", corpus, kernels="triton", numerics=numerics, steps=2, seq_len=16, batch_size=4,
                   eval_tokens=64, device=device))
    assert s["kernels"].startswith("triton")
    assert torch.isfinite(torch.tensor(s["final_train_loss"]))
    assert (tmp_path / "o" / "checkpoints" / "last" / "trainer_state.json").exists()
