"""The CIFAR-10 speedrun network: a patch-whitening 2×2 conv, then three conv groups, each
conv → max-pool → BN → GELU → conv → BN → GELU, widths 64, 256, 256; a 3×3 max-pool and a bias-free linear head.

The design follows the published speedrun line (Page's "How to train your ResNet", tysam-code's hlb-CIFAR10,
Jordan's airbench, arXiv:2404.00498), written here from their descriptions:
- the first layer's filters are the eigenvectors of the 2×2×3 patch covariance of training images, scaled by
  1/√(λ + ε), in ± pairs (`init_from_data`); frozen, only its bias trains — the network starts on whitened input;
- the other convs start as Kaiming-uniform plus an identity (Dirac) on their first `in` filters, an implicit
  residual path in a network without shortcuts;
- batch norm without a trained scale (γ stays 1), ε = 1e-12 and a fast running average (momentum 0.4);
- logits scaled by 1/9, which sets the softmax temperature the learning rate was tuned for.
"""

import torch
from torch import nn

WIDTHS = (64, 256, 256)  # the three conv groups
WHITEN_KERNEL = 2
LOGIT_SCALE = 1 / 9


class Conv(nn.Conv2d):
    """3×3 'same' conv without bias whose first `in_channels` filters start as the identity."""

    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self):
        super().reset_parameters()
        n = min(self.in_channels, self.out_channels)
        nn.init.dirac_(self.weight.data[:n])


class Norm(nn.BatchNorm2d):
    """Batch norm with γ fixed at 1 (only the shift β trains)."""

    def __init__(self, channels):
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = Conv(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = Norm(out_channels)
        self.conv2 = Conv(out_channels, out_channels)
        self.norm2 = Norm(out_channels)
        self.act = nn.GELU()

    def forward(self, x):
        x = self.conv1(x)
        x = self.pool(x)
        x = self.norm1(x)
        x = self.act(x)
        x = self.conv2(x)
        x = self.norm2(x)
        return self.act(x)


class SpeedNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, widths=WIDTHS):
        super().__init__()
        whiten_width = 2 * in_channels * WHITEN_KERNEL ** 2
        self.whiten = nn.Conv2d(in_channels, whiten_width, kernel_size=WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from the data by init_from_data, then frozen
        nn.init.zeros_(self.whiten.bias)
        self.act = nn.GELU()
        groups, channels = [], whiten_width
        for width in widths:
            groups.append(ConvGroup(channels, width))
            channels = width
        self.layers = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)  # the 3×3 map left at 32×32 input, whatever the input size
        self.fc = nn.Linear(channels, num_classes, bias=False)

    def forward(self, x):
        x = self.whiten(x)
        x = self.act(x)
        x = self.layers(x)
        x = self.pool(x).flatten(1)
        return self.fc(x) * LOGIT_SCALE

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening filters from normalised training images (N, C, H, W): eigenvectors of the covariance of all
        k×k patches, largest eigenvalue first, each scaled by 1/√(λ + ε), followed by their negatives."""
        k = self.whiten.kernel_size[0]
        c = images.shape[1]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        filters = (eigenvectors / torch.sqrt(eigenvalues + eps)).T.reshape(-1, c, k, k)
        weight = torch.cat([filters, -filters])
        self.whiten.weight.copy_(weight.to(self.whiten.weight))


def speednet(num_classes=10, in_channels=3, image_size=32, hidden=None):
    """The registry builder; `hidden` overrides the three group widths (smaller ones for CPU-sized checks)."""
    return SpeedNet(num_classes, in_channels, tuple(hidden) if hidden else WIDTHS)
