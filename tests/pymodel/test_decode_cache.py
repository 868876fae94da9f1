"""The float model's inference cache of ternary codes: bit-identical logits, invalidated on every weight change."""

import pytest
import torch

from mmfree.pymodel.model import BitLinear

from .helpers import random_model


def uncached(model, ids, state=None):
    """Logits through the per-call ternarisation (autograd on selects TernaryLinearSTE), without touching caches."""
    with torch.enable_grad():
        out = model(ids, state=state, return_state=state is not None)
    return out


def cached(model, ids, state=None):
    with torch.no_grad():
        return model(ids, state=state, return_state=state is not None)


def n_cached(model) -> int:
    return sum(m._codes is not None for m in model.modules() if isinstance(m, BitLinear))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_logits_bit_identical(dtype):
    model = random_model(3, num_hidden_layers=3).to(dtype)
    ids = torch.randint(0, 97, (2, 29), generator=torch.Generator().manual_seed(0))
    assert n_cached(model) == 0
    a = cached(model, ids)
    assert n_cached(model) == len(model.bitlinears())
    b = uncached(model, ids)
    assert a.dtype == dtype and torch.equal(a, b.detach())
    # token by token (the decode path) as well
    sa, sb = model.initial_state(2), model.initial_state(2)
    for t in range(ids.shape[1]):
        la, sa = cached(model, ids[:, t:t + 1], sa)
        lb, sb = uncached(model, ids[:, t:t + 1], sb)
        assert torch.equal(la, lb.detach())


def _check_fresh(model, ids):
    """The cached logits equal an uncached run of the current weights."""
    assert torch.equal(cached(model, ids), uncached(model, ids).detach())


def test_cache_follows_load_state_dict_optimizer_and_edits():
    model = random_model(1)
    ids = torch.randint(0, 97, (1, 17), generator=torch.Generator().manual_seed(1))
    before = cached(model, ids)
    model.load_state_dict(random_model(2).state_dict())
    after = cached(model, ids)
    assert not torch.equal(before, after)
    _check_fresh(model, ids)

    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model.train()
    assert n_cached(model) == 0                       # .train() drops the codes
    _, loss = model(ids, labels=ids)
    loss.backward()
    opt.step()
    model.eval()
    stepped = cached(model, ids)
    assert not torch.equal(stepped, after)
    _check_fresh(model, ids)

    with torch.no_grad():                             # an in-place edit of one weight
        model.lm_head.weight.mul_(-1)
    assert torch.equal(cached(model, ids), -stepped)  # the head's codes and output flip sign exactly
    _check_fresh(model, ids)

    model.double()                                    # new storage and dtype
    _check_fresh(model, ids)


def test_no_cache_while_training_or_with_grad():
    model = random_model(4)
    ids = torch.randint(0, 97, (1, 9))
    model.train()
    with torch.no_grad():
        model(ids)
    assert n_cached(model) == 0
    model.eval()
    logits = model(ids)                               # autograd on: gradients still flow to the weights
    assert n_cached(model) == 0
    logits.sum().backward()
    assert model.lm_head.weight.grad is not None
