"""Each family can drive the loss on one small batch to near zero: the wiring learns."""

import pytest
import torch

from cnnlab import create_model


def overfit(model, x, y, loss_fn, steps, lr):
    """The training loss after `steps` Adam steps on (x, y), measured in train mode (batch statistics)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(loss_fn(model(x), y))


def test_linear_regression_fits_a_linear_target():
    torch.manual_seed(0)
    x = torch.randn(16, 2)
    y = x @ torch.tensor([[2.0], [-3.4]]) + 4.2
    model = create_model("linreg", in_features=2)
    loss = overfit(model, x, y, lambda p, t: 0.5 * (p - t).square().mean(), steps=300, lr=0.1)
    assert loss < 1e-4


@pytest.mark.parametrize("name,options,size,steps,lr", [
    ("softmax", {}, 16, 100, 0.05),
    ("mlp", {"hidden": (64,)}, 16, 100, 0.01),
    ("mlp", {"hidden": (64,), "batch_norm": True, "dropout": 0.1}, 16, 150, 0.01),
    ("vgg11_bn", {"head": "cifar", "dropout": 0.0}, 32, 40, 1e-3),
    ("vgg11", {"head": "cifar", "dropout": 0.0}, 32, 60, 1e-4),
    ("resnet18", {"stem": "cifar"}, 16, 40, 1e-3),
    pytest.param("resnet50", {"stem": "cifar"}, 16, 40, 1e-3, marks=pytest.mark.slow),
])
def test_classifier_overfits_sixteen_examples(name, options, size, steps, lr):
    torch.manual_seed(0)
    x = torch.randn(16, 3, size, size)
    y = torch.arange(16) % 10
    model = create_model(name, 10, image_size=size, **options)
    loss = overfit(model, x, y, torch.nn.functional.cross_entropy, steps, lr)
    assert loss < 0.05, loss
