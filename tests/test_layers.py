"""The seed's worked examples of convolution and pooling (D2L 7.2–7.5) through the layers the models use."""

import torch
from torch import nn

from cnnlab.models import create_model
from cnnlab.models.resnet import conv1x1, conv3x3
from cnnlab.models.vgg import local_response_norm
from reference import corr2d, corr2d_multi_in, corr2d_multi_in_out, pool2d

X = torch.arange(9.0).reshape(3, 3)
K = torch.arange(4.0).reshape(2, 2)
POOL_IN = torch.tensor([[3.0, 4, 6, 5], [2, 4, 6, 8], [1, 6, 7, 5], [9, 7, 4, 6]])


def whitening_conv(in_channels: int, kernels: torch.Tensor) -> nn.Module:
    """speednet's patch-whitening layer (cnnlab's 2×2 convolution), its first output channels given `kernels`
    (out, in, 2, 2) and every bias 0, so that it computes the worked examples."""
    conv = create_model("speednet", in_channels=in_channels).whiten
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:len(kernels)] = kernels
        conv.bias.zero_()
    return conv


def test_the_speednet_whitening_conv_gives_the_worked_example():
    expected = torch.tensor([[19.0, 25.0], [37.0, 43.0]])
    assert torch.equal(corr2d(X, K), expected)  # the reference the other tests trust, on the book's example
    out = whitening_conv(1, K.reshape(1, 1, 2, 2))(X.reshape(1, 1, 3, 3))
    assert torch.equal(out[0, 0].detach(), expected)  # a valid (unpadded), stride-1 cross-correlation


def test_the_models_max_pools_give_the_worked_example():
    expected = torch.tensor([[4.0, 8.0], [9.0, 7.0]])
    # D2L's stride-1 pooling of the 3×3 example: max [[4, 5], [7, 8]], mean [[2, 3], [5, 6]].
    assert torch.equal(pool2d(X, (2, 2)), torch.tensor([[4.0, 5.0], [7.0, 8.0]]))
    assert torch.equal(pool2d(X, (2, 2), "avg"), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
    assert torch.equal(pool2d(POOL_IN, (2, 2))[::2, ::2], expected)  # stride 2: the stride-1 result's corners
    vgg_pool = create_model("vgg11", 10, head="cifar").features[2]  # configuration A's first "M", after conv and ReLU
    speednet_pool = create_model("speednet").layers[0].pool  # the first conv group's
    for pool in (vgg_pool, speednet_pool):
        assert torch.equal(pool(POOL_IN.reshape(1, 1, 4, 4)).reshape(2, 2), expected), pool


def test_multi_input_channel_worked_example_through_the_whitening_conv():
    x = torch.stack([X, X + 1])
    k = torch.stack([K, K + 1])
    expected = torch.tensor([[56.0, 72.0], [104.0, 120.0]])
    assert torch.equal(corr2d_multi_in(x, k), expected)
    out = whitening_conv(2, k[None])(x[None])
    assert torch.equal(out[0, 0].detach(), expected)  # the channels' correlations, summed


def test_multi_in_out_by_hand_equals_the_models_conv_layers():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    for layer in (conv3x3(3, 4), conv1x1(3, 4)):
        layer = layer.double()
        pad = layer.padding[0]
        by_hand = corr2d_multi_in_out(nn.functional.pad(x, (pad,) * 4), layer.weight.detach())
        torch.testing.assert_close(layer(x[None])[0].detach(), by_hand)
    # D2L's three-output example: kernels K, K+1, K+2 over the two-channel input.
    k = torch.stack([torch.stack([K, K + 1]) + i for i in range(3)])
    y = corr2d_multi_in_out(torch.stack([X, X + 1]), k)
    assert torch.equal(y[0], torch.tensor([[56.0, 72.0], [104.0, 120.0]]))
    assert torch.equal(y[1], torch.tensor([[76.0, 100.0], [148.0, 172.0]]))


def test_vgg_first_conv_is_a_padded_3x3_cross_correlation():
    torch.manual_seed(0)
    conv = create_model("vgg11", 10, head="cifar").features[0].double()
    x = torch.randn(3, 5, 5, dtype=torch.float64)
    by_hand = corr2d_multi_in_out(nn.functional.pad(x, (1, 1, 1, 1)), conv.weight.detach())
    by_hand += conv.bias.detach()[:, None, None]
    torch.testing.assert_close(conv(x[None])[0].detach(), by_hand)


def test_lrn_is_krizhevskys_formula():
    # b_i = a_i / (k + α Σ_{j=i−n/2}^{i+n/2} a_j²)^β with n=5, α=1e-4, β=0.75, k=2 (AlexNet §3.3).
    torch.manual_seed(0)
    a = torch.randn(1, 8, 2, 2, dtype=torch.float64) * 10
    b = torch.empty_like(a)
    for i in range(8):
        window = a[:, max(0, i - 2):min(8, i + 3)]
        b[:, i] = a[:, i] / (2 + 1e-4 * (window ** 2).sum(1)) ** 0.75
    torch.testing.assert_close(local_response_norm()(a), b)
