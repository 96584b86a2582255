"""VGG (Simonyan & Zisserman 2015, Table 1) as data: one row per configuration, one `make_features`.

Module names and indices follow torchvision's `vgg.py`, so its checkpoints load with `strict=True`.
"""

from torch import nn

# An int is a 3×3 conv with that many output channels, (c, 1) a 1×1 conv (configuration C), "M" a 2×2 max-pool.
CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M", 512, 512, (512, 1), "M", 512, 512, (512, 1), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

HEADS = ("imagenet", "cifar")


def local_response_norm():
    """AlexNet's LRN with the paper's n=5, α=1e-4, β=0.75, k=2.

    Krizhevsky et al. divide by (k + α·Σa²)^β; torch divides by (k + α/n·Σa²)^β, so torch's alpha is α·n.
    """
    size = 5
    return nn.LocalResponseNorm(size, alpha=1e-4 * size, beta=0.75, k=2.0)


def make_features(cfg, batch_norm=False, lrn=False, in_channels=3) -> nn.Sequential:
    """The convolutional body: conv [→ BN] → ReLU per entry, max-pool at each "M"; LRN after the first conv if asked."""
    layers = []
    first_conv = True
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        channels, kernel = v if isinstance(v, tuple) else (v, 3)
        layers.append(nn.Conv2d(in_channels, channels, kernel_size=kernel, padding=kernel // 2))
        if batch_norm:
            layers.append(nn.BatchNorm2d(channels))
        layers.append(nn.ReLU(inplace=True))
        if lrn and first_conv:
            layers.append(local_response_norm())
        first_conv = False
        in_channels = channels
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """features → avgpool → flatten → classifier, with the paper's FC head or a small one for 32×32/64×64 inputs.

    `imagenet` head: adaptive 7×7 pool, FC-4096, FC-4096, FC-classes with dropout (torchvision's layout).
    `cifar` head: adaptive 1×1 pool, FC-512, FC-classes with dropout: the 512×7×7 head would hold 120 M parameters
    to look at a 1×1 map.
    """

    def __init__(self, features: nn.Module, num_classes=1000, head="imagenet", dropout=0.5):
        super().__init__()
        self.features = features
        if head == "imagenet":
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, num_classes),
            )
        else:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.classifier = nn.Sequential(
                nn.Linear(512, 512),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(512, num_classes),
            )
        self._init_weights()

    def _init_weights(self):
        # He initialisation for the ReLU convs (the paper pre-trained A to initialise deeper nets; He et al. 2015
        # showed this init reaches the same place directly) and for the FC layers too. The paper's (and
        # torchvision's) N(0, 0.01²) FC init starves VGG without batch norm: its logits start with std 0.006 and
        # VGG-11 stayed at chance for 140 steps at every lr from 0.005 to 0.02 on CIFAR-10, where He-initialised
        # FC layers reached 35 % (RESULTS.md, "Default recipes").
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = x.flatten(1)
        return self.classifier(x)


def vgg(cfg: str, batch_norm=False, lrn=False, *, num_classes=1000, in_channels=3, image_size=None,
        head="imagenet", dropout=0.5) -> VGG:
    """Build VGG configuration `cfg` (A–E). image_size is unused: the adaptive pool takes any size ≥ 32."""
    return VGG(make_features(CFGS[cfg], batch_norm, lrn, in_channels), num_classes, head, dropout)
