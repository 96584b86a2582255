"""Fine-tuning: --init-from (torchvision's and cnnlab's files), --freeze-backbone, --head-lr-mult."""

import pytest
import torch
import torchvision

from cnnlab.cli import main
from cnnlab.config import TrainConfig
from cnnlab.finetune import classifier, load_initial_weights
from cnnlab.models import create_model
from cnnlab.optim import build_optimizer
from data_fixtures import write_train_test_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A CIFAR-10-named image folder: 10 classes × 8 train images, 2 test images each (32 px)."""
    return write_train_test_tree(tmp_path_factory.mktemp("tree"), 8, 2)


def train(tmp_path, name, *argv):
    return main(["train", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / name),
                 "--epochs", "1", "--batch-size", "16", "--val-split", "0", *map(str, argv)])


def test_torchvision_weights_load_with_a_new_classifier_and_a_frozen_backbone_stays_as_loaded(tmp_path, tree,
                                                                                                capsys):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(num_classes=1000)  # no download: random weights in torchvision's layout
    with torch.no_grad():  # BN statistics that differ from a fresh model's, so keeping them is visible
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    assert train(tmp_path, "run", "--model", "resnet18", "--stem", "imagenet", "--data", tree, "--init-from",
                 tmp_path / "resnet18.pth", "--freeze-backbone") == 0
    out = capsys.readouterr().out
    assert "initial weights: 120 tensors from" in out
    assert "the classifier fc was replaced (1000 → 10 outputs, freshly initialised)" in out
    assert "backbone frozen: only the classifier fc trains (5,130 parameters); 20 batch-norm layers keep" in out
    trained = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    for name, value in reference.state_dict().items():
        if not name.startswith("fc."):  # weights and BN statistics exactly as loaded
            assert torch.equal(trained[name], value), name
    assert trained["fc.weight"].shape == (10, 512)


def test_a_run_folder_is_a_starting_point_and_a_mismatch_is_one_line(tmp_path, tree, capsys):
    assert train(tmp_path, "first", "--model", "mlp", "--hidden", "32", "--data", tree) == 0
    first = torch.load(tmp_path / "first" / "best.pt", weights_only=True)["model"]
    capsys.readouterr()
    assert train(tmp_path, "second", "--model", "mlp", "--hidden", "32", "--data", tree, "--init-from",
                 tmp_path / "first", "--freeze-backbone") == 0
    assert "replaced" not in capsys.readouterr().out  # same classes: everything loads
    second = torch.load(tmp_path / "second" / "best.pt", weights_only=True)["model"]
    head, _ = classifier(create_model("mlp", 10, in_features=3072, hidden=[32]))
    assert all(torch.equal(first[k], second[k]) for k in first if not k.startswith(head + "."))
    assert any(not torch.equal(first[k], second[k]) for k in first if k.startswith(head + "."))

    assert train(tmp_path, "third", "--model", "mlp", "--hidden", "64", "--data", tree, "--init-from",
                 tmp_path / "first") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit mlp" in err and "only the classifier" in err
    assert not (tmp_path / "third").exists()  # nothing written for a bad start
    assert train(tmp_path, "fourth", "--model", "mlp", "--data", tree, "--init-from", tmp_path / "nothing.pt") == 2
    assert "no such file" in capsys.readouterr().err


def test_a_file_from_another_model_names_what_is_missing(tmp_path):
    model = create_model("vgg11", 10, image_size=32, head="cifar")
    path = tmp_path / "resnet18.pt"
    torch.save(create_model("resnet18", 10, stem="cifar").state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit vgg11: \d+ of the model's tensors missing .*; \d+ unknown"):
        load_initial_weights(model, path, "vgg11")


def test_head_lr_mult_gives_the_classifier_its_own_groups_at_the_multiplied_lr():
    model = create_model("resnet18", 10, stem="cifar")
    optimizer = build_optimizer(model, TrainConfig(model="resnet18", lr=0.1, weight_decay=5e-4, head_lr_mult=10))
    head = {id(p) for p in model.fc.parameters()}
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= head or not ids & head  # a group is all head or no head
        assert group["lr"] == pytest.approx(1.0 if ids <= head else 0.1)
    decays = {(group["lr"], group["weight_decay"]) for group in optimizer.param_groups}
    assert decays == {(0.1, 5e-4), (0.1, 0.0), (1.0, 5e-4), (1.0, 0.0)}  # fc.weight decays, fc.bias does not
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
