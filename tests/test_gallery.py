"""The first layer's weights as pictures and the most confident mistakes: checked by hand, on every model, and as
`cnnlab eval` writes them (in-memory and streamed splits, colour and grey images)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab.config import TrainConfig
from cnnlab.data.stream import StreamLoader, StreamingImageFolder, eval_transform
from cnnlab.engine import fit
from cnnlab.evaluate import evaluate_run, load_model
from cnnlab.gallery import (confident_mistakes, filter_tiles, first_layer, save_filters, split_images,
                            split_paths)
from cnnlab.models import create_model, list_models, model_info
from data_fixtures import write_image_folder, write_mnist_idx


@pytest.mark.parametrize("name", [n for n in list_models() if model_info(n).takes_images])
def test_every_image_model_has_a_first_layer_that_sees_the_pixels(name):
    model = create_model(name, num_classes=10, in_channels=3, image_size=32)
    layer, weights = first_layer(model, (32, 32, 3))
    assert weights.dim() == 4 and weights.shape[1] == 3
    module = model.get_submodule(layer)
    if isinstance(module, nn.Conv2d):
        assert torch.equal(weights, module.weight.detach())
    else:
        assert isinstance(module, nn.Linear) and weights.shape[2:] == (32, 32)


def test_a_linear_unit_is_shown_as_the_image_it_responds_to():
    # softmax regression: the logit of unit u for an image with one bright pixel (c, h, w) is weight[u, c, h, w]
    model = create_model("softmax", num_classes=4, in_channels=3, image_size=8).eval()
    _, weights = first_layer(model, (8, 8, 3))
    x = torch.zeros(1, 3, 8, 8)
    x[0, 2, 5, 1] = 1.0
    bias = model.get_submodule(first_layer(model, (8, 8, 3))[0]).bias.detach()
    assert torch.allclose(model(x)[0] - bias, weights[:, 2, 5, 1], atol=1e-6)


def test_the_first_layer_is_the_first_the_forward_pass_calls_not_the_first_registered():
    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)  # registered before the stem, called after it
            self.stem = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.fc(self.stem(x).mean((2, 3)))

    model = HeadFirst().train()
    name, weights = first_layer(model, (8, 8, 1))
    assert name == "stem" and weights.shape == (4, 1, 3, 3) and model.training  # the mode is left as it was
    # a first linear layer that does not take the whole image (here: pooled features) has no picture
    assert first_layer(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4, 2)), (8, 8, 1)) is None


def test_feature_vectors_have_no_first_layer_picture(tmp_path):
    model = create_model("linreg", num_classes=1, in_features=2)
    assert first_layer(model, (2,)) is None
    assert save_filters(model, (2,), tmp_path / "filters.png") is None and not (tmp_path / "filters.png").exists()


def test_filter_tiles_put_zero_at_grey_and_each_filters_extreme_at_black_or_white():
    weights = torch.zeros(3, 3, 2, 2)
    weights[0, 0, 0, 0], weights[0, 1, 1, 1] = 4.0, -2.0  # filter 0: its largest |w| is 4
    weights[1, 2, 0, 1] = -0.001  # filter 1: tiny, still spans the full range
    tiles = filter_tiles(weights)
    assert tiles.shape == (3, 2, 2, 3)  # (n, h, w, RGB)
    assert tiles[0, 0, 0, 0] == 1.0 and tiles[0, 1, 1, 1] == pytest.approx(0.25) and tiles[0, 0, 1, 2] == 0.5
    assert tiles[1, 0, 1, 2] == 0.0 and np.all(tiles[2] == 0.5)  # an all-zero filter is all grey
    grey = filter_tiles(torch.ones(5, 1, 3, 3))
    assert grey.shape == (5, 3, 3) and np.all(grey == 1.0)
    assert len(filter_tiles(torch.randn(100, 3, 3, 3))) == 64


def test_confident_mistakes_by_hand():
    probabilities = np.array([[0.9, 0.1],    # 0: right
                              [0.2, 0.8],    # 1: wrong (label 0), p 0.8
                              [0.6, 0.4],    # 2: wrong (label 1), p 0.6
                              [0.05, 0.95],  # 3: right
                              [0.8, 0.2]])   # 4: wrong (label 1), p 0.8: ties keep the split's order
    labels = np.array([0, 0, 1, 1, 1])
    assert confident_mistakes(probabilities, labels) == [
        {"index": 1, "true": 0, "predicted": 1, "probability": 0.8},
        {"index": 4, "true": 1, "predicted": 0, "probability": 0.8},
        {"index": 2, "true": 1, "predicted": 0, "probability": 0.6}]
    assert confident_mistakes(probabilities, labels, count=1)[0]["index"] == 1
    assert confident_mistakes(probabilities, probabilities.argmax(1)) == []


def test_a_streamed_split_shows_its_images_as_evaluation_cropped_them(tmp_path):
    root, _ = write_image_folder(tmp_path / "tree", classes=["a", "b"], per_class=3, size=40, splits=("val",),
                                 fmt="JPEG")
    folder = StreamingImageFolder(root / "val", False, image_size=32, resize_size=36)
    loader = StreamLoader(folder, [5, 1, 3], batch_size=2, device="cpu", train=False, mean=[0.5] * 3,
                          std=[0.25] * 3, workers=0)
    shown = split_images(loader, [0, 2])  # positions in the split: files 5 and 3
    assert split_paths(loader, [0, 2]) == [folder.path(5), folder.path(3)]
    for image, file_index in zip(shown, (5, 3)):
        with Image.open(folder.path(file_index)) as im:
            expected = eval_transform(im, 32, 36).permute(1, 2, 0).numpy()
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and np.array_equal(image, expected)


def _fit(tmp_path, **options):
    out = tmp_path / "run"
    fit(TrainConfig(epochs=1, batch_size=16, val_split=0.2, lr=0.05, cache_dir=str(tmp_path / "cache"),
                    out=str(out), **options))
    return out


def test_eval_draws_the_first_layer_and_the_mistakes_it_lists(tmp_path):
    tree, _ = write_image_folder(tmp_path / "tree", per_class=6)
    run = _fit(tmp_path, model="vgg11_bn", dataset="cifar10", data=str(tree))
    result = evaluate_run(run, save_predictions="")
    saved = json.loads((run / "eval_test.json").read_text())
    predictions = np.load(result["predictions"])
    probabilities, labels = predictions["probabilities"], predictions["label"]
    wrong = np.flatnonzero(probabilities.argmax(1) != labels)
    assert [m["index"] for m in saved["mistakes"]] == \
        [m["index"] for m in confident_mistakes(probabilities, labels)]
    assert len(saved["mistakes"]) == min(16, len(wrong)) > 0
    classes = list(saved["per_class"])
    for mistake in saved["mistakes"]:
        i = mistake["index"]
        assert classes[labels[i]] == mistake["true"] != mistake["predicted"] == classes[probabilities[i].argmax()]
        assert mistake["probability"] == pytest.approx(probabilities[i].max(), abs=1e-4)
    for key in ("filters_png", "mistakes_png"):
        with Image.open(result[key]) as im:
            assert im.format == "PNG" and min(im.size) > 200
    assert saved["filters_png"].endswith("filters.png") and saved["mistakes_png"].endswith("mistakes_test.png")
    model, checkpoint = load_model(run)
    # the pictures' source: the test split's resident images, in the loader's order
    from cnnlab.run_data import build_data

    loaders = build_data(TrainConfig.from_dict(checkpoint["config"]), torch.device("cpu"))
    first = saved["mistakes"][0]["index"]
    assert np.array_equal(split_images(loaders.test, [first])[0], loaders.test.images[first].numpy())


def test_grey_images_and_a_linear_first_layer(tmp_path):
    root, _ = write_mnist_idx(tmp_path / "mnist", n_train=40, n_test=20)
    run = _fit(tmp_path, model="mlp", dataset="mnist", data=str(root), hidden=[12])
    result = evaluate_run(run)
    for key in ("filters_png", "mistakes_png"):
        with Image.open(result[key]) as im:
            assert im.format == "PNG"
    assert len(result["mistakes"]) > 0 and all(m["true"] != m["predicted"] for m in result["mistakes"])


def test_eval_repeats_the_runs_own_test_numbers_in_the_runs_precision(tmp_path, monkeypatch):
    import cnnlab.evaluate
    from cnnlab.hardware import Precision

    tree, _ = write_image_folder(tmp_path / "tree", per_class=6)
    run = _fit(tmp_path, model="resnet18", dataset="cifar10", data=str(tree), precision="bf16")
    summary = json.loads((run / "summary.json").read_text())
    result = evaluate_run(run)
    assert result["precision"] == "bf16" and result["acc"] == summary["test_top1"]
    assert result["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    # the control: the same weights in fp32 give another loss, so the check above tells the two apart
    monkeypatch.setattr(cnnlab.evaluate, "eval_precision", lambda *a: Precision("fp32", "test"))
    assert evaluate_run(run, out_dir=tmp_path / "fp32")["loss"] != pytest.approx(summary["test_loss"], rel=1e-6)


def test_eval_takes_the_precision_the_run_tested_in(monkeypatch):
    import cnnlab.evaluate
    from cnnlab.errors import CnnlabError
    from cnnlab.evaluate import eval_precision

    cpu = torch.device("cpu")
    auto = TrainConfig(precision="auto")
    # summary.json's word wins over re-resolving `auto` here (a run trained where auto meant fp32)
    assert (eval_precision(auto, cpu, "resnet18", "fp32").name, eval_precision(auto, cpu, "resnet18", "bf16").name) \
        == ("fp32", "bf16")
    assert eval_precision(auto, cpu, "resnet18", "bf16").reason == "as the run tested"
    assert eval_precision(TrainConfig(precision="fp32"), cpu, "resnet18").name == "fp32"  # no summary: the setting

    def no_bf16(*args):
        raise CnnlabError("this GPU has no bf16")

    monkeypatch.setattr(cnnlab.evaluate, "resolve_precision", no_bf16)
    fallback = eval_precision(auto, cpu, "resnet18", "bf16")
    assert fallback.name == "fp32" and "cannot compute bf16" in fallback.reason
