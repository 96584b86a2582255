"""The one table of optimizers (cnnlab.optimizers): --optimizer's choices, the builder and the log text read it."""

from dataclasses import fields

import torch

from cnnlab.config import TrainConfig
from cnnlab.optim import build_optimizer
from cnnlab.optimizers import OPTIMIZERS

TORCH_CLASSES = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


def test_the_flags_choices_are_the_tables_rows():
    field = next(f for f in fields(TrainConfig) if f.name == "optimizer")
    assert field.metadata["choices"] == tuple(OPTIMIZERS) == tuple(TORCH_CLASSES)
    assert field.metadata["help"] == "sgd (momentum v = βv + g, W -= αv) or adamw"


def test_every_row_builds_its_optimizer_at_the_configs_lr():
    model = torch.nn.Linear(3, 2)
    for name in OPTIMIZERS:
        config = TrainConfig(optimizer=name, lr=0.05, weight_decay=1e-4)
        optimizer = build_optimizer(model, config)
        assert type(optimizer) is TORCH_CLASSES[name]
        assert all(group["lr"] == 0.05 for group in optimizer.param_groups)


def test_the_log_names_the_method():
    assert OPTIMIZERS["adamw"].describe(TrainConfig(optimizer="adamw")) == " with AdamW"
    assert OPTIMIZERS["sgd"].describe(TrainConfig(momentum=0.9, nesterov=True)) == \
        " with Nesterov momentum 0.9 (--momentum 0: none)"
    assert OPTIMIZERS["sgd"].describe(TrainConfig(momentum=0.0)) == " without momentum"
