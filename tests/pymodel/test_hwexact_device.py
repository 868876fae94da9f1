"""Hardware-exact QAT derives its integer parameters with torch ops on the model's device: bit for bit the
export's numpy derivation (:func:`mmfree.pymodel.export.int_params`), with no tensor copied to the host."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from mmfree.pymodel import hwexact as HW
from mmfree.pymodel.config import MMFreeConfig
from mmfree.pymodel.export import formats_of, int_params
from mmfree.pymodel.model import MMFreeForCausalLM


def _assert_same(model):
    arrays, consts = int_params(model)
    got, got_consts = HW.device_int_params(model, formats_of(model))
    assert list(got) == list(arrays)
    for name, a in arrays.items():
        g = got[name].cpu().numpy()
        assert g.dtype == a.dtype or name.endswith("one_minus_lb"), (name, g.dtype, a.dtype)
        np.testing.assert_array_equal(g.astype(np.int64), a.astype(np.int64), err_msg=name)
    assert got_consts == consts


def test_default_model_params_bit_identical():
    from mmfree.pymodel.checkpoint import load_model

    _assert_same(load_model("default"))


@pytest.mark.parametrize("seed", range(4))
def test_random_small_models_bit_identical(seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    d, L = [(32, 1), (48, 2), (64, 3), (40, 2)][seed]
    model = MMFreeForCausalLM(MMFreeConfig(vocab_size=101, hidden_size=d, num_hidden_layers=L,
                                           tie_word_embeddings=seed == 3))
    with torch.no_grad():
        for p in model.parameters():                       # norms, lower bounds and weights off their init
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    _assert_same(model)


class _CountHostCopies(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("cpu", "numpy", "tolist", "from_numpy"):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_hardware_step_makes_no_host_copy():
    """A training step in hardware mode re-derives the parameters (the weights changed) without .cpu(),
    .numpy(), .tolist() or from_numpy: counted with a torch function mode over the whole derivation and forward
    pass (on this CPU-only machine a `.to(device)` cannot be told from a host copy, so the test counts the
    calls a host round trip needs; the old numpy derivation makes them and is caught, checked first)."""
    torch.manual_seed(0)
    model = MMFreeForCausalLM(MMFreeConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2))
    model.numerics = "hardware"
    formats_of(model)                                      # calibrated once, stored in the config
    HW._luts(torch.device("cpu"))                          # constants, made once per device
    with _CountHostCopies() as old:
        int_params(model)
    assert "numpy" in old.calls                            # the counter sees a host round trip
    ids = torch.randint(0, 64, (2, 8))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(2):
        mode = _CountHostCopies()
        with mode:
            logits = model(ids)
        loss = logits.float().logsumexp(-1).mean()
        loss.backward()
        opt.step()
        assert mode.calls == [], mode.calls
