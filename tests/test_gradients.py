"""Backpropagation checked against float64 finite differences (the chain rule of D2L 5.3)."""

import torch
from torch.func import functional_call

from cnnlab import create_model


def test_mlp_gradients_match_central_differences():
    torch.manual_seed(0)
    model = create_model("mlp", 3, in_features=5, hidden=(4, 6), activation="tanh").double()
    x = torch.randn(8, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    names = [n for n, _ in model.named_parameters()]

    def loss_of(*params):
        logits = functional_call(model, dict(zip(names, params)), (x,))
        return torch.nn.functional.cross_entropy(logits, y)

    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    assert torch.autograd.gradcheck(loss_of, params, eps=1e-6, atol=1e-7)

    # The same, written out: perturb each weight of the first layer by ±h and compare with autograd.
    loss_of(*params).backward()
    h = 1e-6
    w = params[0]
    for idx in [(0, 0), (1, 3), (3, 4)]:
        plus, minus = w.detach().clone(), w.detach().clone()
        plus[idx] += h
        minus[idx] -= h
        with torch.no_grad():
            numeric = (loss_of(plus, *params[1:]) - loss_of(minus, *params[1:])) / (2 * h)
        assert abs(numeric.item() - w.grad[idx].item()) < 1e-8


def test_batch_norm_mlp_gradients_match_central_differences():
    torch.manual_seed(1)
    model = create_model("mlp", 2, in_features=3, hidden=(5,), batch_norm=True).double().train()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: model(inp).square().sum(), (x,), eps=1e-6, atol=1e-6)
