"""torchvision's own models load into cnnlab's with strict=True and compute the same function."""

import pytest
import torch

from cnnlab import create_model

torchvision = pytest.importorskip("torchvision")

NAMES = ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
         "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


@pytest.mark.parametrize("name", NAMES)
def test_torchvision_state_dict_loads_strictly_and_gives_the_same_logits(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None, num_classes=1000).eval()
    ours = create_model(name, 1000).eval()
    ours_keys = {k: v.shape for k, v in ours.state_dict().items()}
    assert ours_keys == {k: v.shape for k, v in reference.state_dict().items()}
    ours.load_state_dict(reference.state_dict(), strict=True)
    if name.startswith("resnet"):
        # Random BN statistics so the residual branches contribute; freshly built BN is the identity.
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
        ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        assert expected.abs().max() > 1e-3  # a comparison of near-zero logits would prove nothing
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-6)
