"""One row per registered model: what `cnnlab models` prints and docs/models.md's table shows."""

import torch

from cnnlab.models.profile import count_macs, count_params
from cnnlab.models.registry import ALIASES, REGISTRY, check_arguments, create_model, list_models

_FAMILY_OPTIONS = {"vgg": "head", "resnet": "stem"}


def model_table(num_classes=1000, image_size=224, in_channels=3, head="imagenet", stem="imagenet") -> list[dict]:
    """Name, paper alias, family, parameters and forward MACs of every model, counted on the meta device.

    MACs are None for a model that cannot take images this small (VGG below 32×32).
    """
    check_arguments(num_classes=num_classes, image_size=image_size, in_channels=in_channels)
    aliases = {v: k for k, v in ALIASES.items()}
    family_option = {"head": head, "stem": stem}
    rows = []
    for name in list_models():
        spec = REGISTRY[name]
        options = {}
        if spec.family in _FAMILY_OPTIONS:
            key = _FAMILY_OPTIONS[spec.family]
            options[key] = family_option[key]
        fits = image_size >= spec.min_image_size  # conv models' parameters do not depend on the size
        with torch.device("meta"):
            model = create_model(name, num_classes, in_channels=in_channels,
                                 image_size=image_size if fits else spec.min_image_size, **options)
        rows.append({
            "name": name,
            "alias": aliases.get(name, ""),
            "family": spec.family,
            "params": count_params(model),
            "macs": count_macs(model, (in_channels, image_size, image_size)) if fits else None,
            "image_size": image_size,
            "num_classes": 1 if name == "linreg" else num_classes,
            "description": spec.description,
        })
    return rows
