"""Linear regression, softmax regression and the multilayer perceptron (D2L chapters 3–5)."""

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class LinearRegression(nn.Module):
    """ŷ = wᵀx + b on the flattened input; one output per example, shape (N, 1)."""

    def __init__(self, in_features: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(in_features, 1)
        # D2L's initialisation: w ~ N(0, 0.01²), b = 0.
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        x = self.flatten(x)
        return self.linear(x)


class SoftmaxRegression(nn.Module):
    """Flatten → linear → logits; the cross-entropy loss applies the softmax."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(in_features, num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        x = self.flatten(x)
        return self.linear(x)


class MLP(nn.Module):
    """Flatten, then per hidden layer: linear → [batch norm] → activation → [dropout]; a linear output layer.

    Batch norm sits between the affine map and the nonlinearity, as in Ioffe & Szegedy and D2L 8.5.
    """

    def __init__(self, in_features: int, num_classes: int, hidden=(256,), activation="relu",
                 dropout=0.0, batch_norm=False):
        super().__init__()
        layers = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


def _in_features(in_channels: int, image_size: int, in_features):
    return in_channels * image_size ** 2 if in_features is None else in_features


def linreg(num_classes=1, in_channels=3, image_size=32, in_features=None):
    """Linear regression; num_classes is ignored (one real-valued output)."""
    return LinearRegression(_in_features(in_channels, image_size, in_features))


def softmax(num_classes=10, in_channels=3, image_size=32, in_features=None):
    return SoftmaxRegression(_in_features(in_channels, image_size, in_features), num_classes)


def mlp(num_classes=10, in_channels=3, image_size=32, in_features=None, hidden=(256,),
        activation="relu", dropout=0.0, batch_norm=False):
    return MLP(_in_features(in_channels, image_size, in_features), num_classes, hidden, activation, dropout, batch_norm)
