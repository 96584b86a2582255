"""`cnnlab explain`: Grad-CAM and the input gradient against hand computations, the last-conv-block table against
the registry, and the command on tiny trained runs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cnnlab.cli import main
from cnnlab.config import TrainConfig
from cnnlab.explain import _OnPixels, explain_image, grad_cam, saliency, upsample
from cnnlab.models import create_model, list_models, model_info
from cnnlab.models.vgg import CFGS, make_features
from data_fixtures import png_bytes, rng_images, write_image_folder


class ConvGapLinear(nn.Module):
    """conv → global average pool → linear: Grad-CAM is then the class activation map (Zhou et al. 2016) / (H·W)."""

    def __init__(self, conv: nn.Conv2d, fc: nn.Linear):
        super().__init__()
        self.conv = conv
        self.fc = fc

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_grad_cam_of_a_gap_linear_model_is_the_hand_computed_class_activation_map():
    # A 1×1 conv with 2 filters on a 2×2 image: A_0 = x, A_1 = 1 − x. Class 0: w = (2, 1), class 1: w = (−1, −2).
    conv = nn.Conv2d(1, 2, kernel_size=1)
    fc = nn.Linear(2, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, 1.0]))
        fc.weight.copy_(torch.tensor([[2.0, 1.0], [-1.0, -2.0]]))
        fc.bias.zero_()
    model = ConvGapLinear(conv, fc).eval()
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    # α_k = w_ck / (H·W) = w_ck / 4. Class 0: (2x + (1 − x)) / 4 = (x + 1) / 4, all positive.
    cam, logits = grad_cam(model, conv, x, 0)
    assert torch.allclose(cam, torch.tensor([[0.5, 0.75], [1.0, 1.25]]))
    assert torch.allclose(logits, torch.tensor([[3.5, 0.5]]))  # GAP (2.5, −1.5): (2·2.5 − 1.5, −2.5 + 3)
    # Class 1: (−x − 2(1 − x)) / 4 = (x − 2) / 4 = [[−¼, 0], [¼, ½]]; the ReLU keeps the positive part.
    cam, _ = grad_cam(model, conv, x, 1)
    assert torch.allclose(cam, torch.tensor([[0.0, 0.0], [0.25, 0.5]]))


def test_grad_cam_of_a_random_gap_linear_model_matches_the_formula():
    torch.manual_seed(0)
    conv, fc = nn.Conv2d(3, 4, kernel_size=3, padding=1), nn.Linear(4, 5)
    model = ConvGapLinear(conv, fc).eval()
    x = torch.randn(1, 3, 6, 7)
    activations = F.conv2d(x, conv.weight, conv.bias, padding=1)[0]  # (4, 6, 7)
    for c in range(5):
        expected = torch.relu((fc.weight[c].view(4, 1, 1) * activations).sum(0)) / (6 * 7)
        cam, _ = grad_cam(model, conv, x, c)
        assert cam.shape == (6, 7) and torch.allclose(cam, expected.detach(), atol=1e-6)


def test_upsampling_keeps_the_map_in_zero_one_and_an_empty_map_empty():
    up = upsample(torch.tensor([[0.0, 2.0], [1.0, 4.0]]), (8, 8))
    assert up.shape == (8, 8) and up.min() >= 0 and up.max() == 1.0
    assert torch.equal(upsample(torch.zeros(2, 2), (4, 4)), torch.zeros(4, 4))


def test_the_saliency_of_softmax_regression_is_its_weight_row_seen_from_the_pixels():
    torch.manual_seed(0)
    model = create_model("softmax", num_classes=3, in_channels=3, image_size=4).eval()
    checkpoint = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    pixels = torch.rand(1, 3, 4, 4) * 255
    gradient, _ = saliency(_OnPixels(model, checkpoint), pixels, 2)
    # logit = w·((x/255 − μ)/σ) + b, so ∂logit/∂x = w / (255σ) per channel, whatever the image.
    by_hand = (model.linear.weight[2].view(3, 4, 4) / (255 * torch.tensor(checkpoint["std"]).view(3, 1, 1)))
    assert torch.allclose(gradient, by_hand.abs().amax(0).detach())


def test_every_convolutional_model_has_a_last_conv_block_and_every_other_model_is_flat():
    for name in list_models():
        spec = model_info(name)
        if spec.takes_images:
            assert spec.last_conv_block is not None, name
        else:
            assert spec.family in ("linear", "mlp"), name


@pytest.mark.parametrize("name, options", [("resnet18", {"stem": "cifar"}), ("resnet50", {"stem": "cifar"}),
                                           ("vgg16c_bn", {"head": "cifar"}), ("speednet", {"hidden": (8, 16, 16)})])
def test_the_last_conv_block_ends_after_every_convolution_and_keeps_a_spatial_map(name, options):
    model = create_model(name, num_classes=3, image_size=32, **options).eval()
    block = model_info(name).last_conv_block(model)
    order = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d) or module is block:
            module.register_forward_hook(lambda m, i, o: order.append((m, o.shape)))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    last_module, shape = order[-1]
    assert last_module is block and len(shape) == 4 and shape[2] >= 2


@pytest.mark.parametrize("cfg", sorted(CFGS))
@pytest.mark.parametrize("batch_norm, lrn", [(False, False), (True, False), (False, True)])
def test_every_vgg_configuration_ends_in_the_last_convs_relu_then_a_pool(cfg, batch_norm, lrn):
    features = make_features(CFGS[cfg], batch_norm, lrn)
    last_conv = max(i for i, m in enumerate(features) if isinstance(m, nn.Conv2d))
    assert isinstance(features[-2], nn.ReLU) and isinstance(features[-1], nn.MaxPool2d)
    assert len(features) - 2 - last_conv == (2 if batch_norm else 1)  # conv [→ BN] → ReLU


@pytest.mark.parametrize("name, family_maps", [("mlp", ["heat"]), ("softmax", ["heat", "template"]),
                                               ("resnet18", ["overlay"])])
def test_each_family_gets_its_maps_for_the_top1_class_or_the_one_asked(name, family_maps):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, image_size=8, **({"stem": "cifar"} if name == "resnet18" else {}))
    pixel_model = _OnPixels(model.eval(), {"mean": [0.5] * 3, "std": [0.25] * 3})
    pixels = torch.rand(1, 3, 8, 8) * 255
    classes = ["a", "b", "c", "d"]
    top1 = explain_image(pixel_model, model_info(name), pixels, classes, topk=3)
    assert [kind for kind, _, _ in top1.maps] == family_maps
    assert top1.target == top1.top[0][0] and len(top1.top) == 3 and top1.probability == top1.top[0][1]
    asked = explain_image(pixel_model, model_info(name), pixels, classes, target=classes.index(top1.top[-1][0]))
    assert asked.target == top1.top[-1][0]
    for kind, _, values in asked.maps:
        assert values.shape == ((3, 8, 8) if kind == "template" else (8, 8)) and torch.isfinite(values).all()


# -- the command --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny classification runs on a 16×16 10-class image folder: speednet (Grad-CAM) and softmax (templates)."""
    from cnnlab.engine import fit

    root = tmp_path_factory.mktemp("explain")
    folder, _ = write_image_folder(root / "tree", per_class=2, size=16)
    made = {}
    for name, options in (("speednet", {"hidden": [8, 16, 16]}), ("softmax", {})):
        fit(TrainConfig(model=name, dataset="cifar10", data=str(folder), epochs=1, batch_size=10, device="cpu",
                        val_split=0, cache_dir=str(root / "cache"), out=str(root / name), **options))
        made[name] = root / name
    return made


@pytest.fixture
def images(tmp_path):
    a, b = tmp_path / "a cat.png", tmp_path / "ship.jpg"
    a.write_bytes(png_bytes(rng_images(1, 20, 30, seed=1)[0]))
    b.write_bytes(png_bytes(rng_images(1, 40, 40, seed=2)[0], "JPEG"))
    return [a, b]


@pytest.mark.parametrize("name, panels", [("speednet", 3), ("softmax", 4)])
def test_explain_writes_one_readable_png_per_image(runs, images, tmp_path, capsys, name, panels):
    out = tmp_path / "out"
    assert main(["explain", str(runs[name]), *map(str, images), "--out", str(out), "--topk", "3"]) == 0
    written = [out / "a cat_explain.png", out / "ship_explain.png"]
    assert capsys.readouterr().out.splitlines() == list(map(str, written))
    assert sorted(out.iterdir()) == sorted(written)  # no temporaries left
    for path in written:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.height >= 300 and im.width >= 300 * panels
            assert np.asarray(im.convert("L")).std() > 10  # something was drawn


def test_explain_defaults_to_the_run_folder_and_takes_a_class(runs, images, capsys):
    assert main(["explain", str(runs["speednet"]), str(images[0]), "--class", "truck"]) == 0
    assert (runs["speednet"] / "explain" / "a cat_explain.png").is_file()


@pytest.mark.parametrize("argv, needle", [
    (["{img}", "{missing}"], "does not exist"),
    (["{img}", "--class", "unicorn"], "unknown --class 'unicorn'"),
    (["{img}", "{text}"], "not a readable image"),
    (["{img}", "--topk", "0"], "--topk"),
])
def test_bad_input_is_one_line_and_writes_nothing(runs, images, tmp_path, capsys, argv, needle):
    (tmp_path / "notes.txt").write_text("hello\n")
    argv = [a.format(img=images[0], missing=tmp_path / "nope.png", text=tmp_path / "notes.txt") for a in argv]
    out = tmp_path / "out"
    code = main(["explain", str(runs["softmax"]), *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cnnlab: error: ") and err.count("\n") == 1 and needle in err, err
    assert not out.exists()


def test_two_images_of_one_name_are_refused_before_anything_is_written(runs, images, tmp_path, capsys):
    other = tmp_path / "a cat.jpg"
    other.write_bytes(images[0].read_bytes())
    out = tmp_path / "out"
    assert main(["explain", str(runs["softmax"]), str(images[0]), str(other), "--out", str(out)]) == 2
    assert "same file name" in capsys.readouterr().err and not out.exists()
