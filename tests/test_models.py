"""The model zoo against the papers and torchvision: parameter counts, output shapes, options and errors."""

import pytest
import torch

from cnnlab import CnnlabError, create_model, list_models, model_info
from cnnlab.models import count_params

# torchvision's counts at 1000 classes (VGG: Table 2 of Simonyan & Zisserman rounds them; ResNet: imagenet stem).
IMAGENET_PARAMS = {
    "vgg11": 132_863_336, "vgg11_lrn": 132_863_336, "vgg13": 133_047_848, "vgg16c": 133_638_952,
    "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# Table 2 of the VGG paper, in millions.
PAPER_MILLIONS = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}


def meta_model(name, num_classes=1000, **kw):
    with torch.device("meta"):
        return create_model(name, num_classes, **kw)


@pytest.mark.parametrize("name,expected", sorted(IMAGENET_PARAMS.items()))
def test_imagenet_parameter_counts_match_torchvision(name, expected):
    assert count_params(meta_model(name)) == expected


@pytest.mark.parametrize("alias,millions", sorted(PAPER_MILLIONS.items()))
def test_vgg_parameter_counts_match_paper_table_2(alias, millions):
    assert round(count_params(meta_model(alias)) / 1e6) == millions


def test_cifar_variants_have_the_known_sizes():
    # kuangliu/pytorch-cifar's ResNet18 (3×3 stem, no pool, 10 classes) has 11,173,962 parameters.
    assert count_params(meta_model("resnet18", 10, stem="cifar")) == 11_173_962
    # VGG-11 body (9,220,480) + FC 512→512 (262,656) + FC 512→10 (5,130).
    assert count_params(meta_model("vgg11", 10, head="cifar")) == 9_220_480 + 262_656 + 5_130


def test_flat_models_size_their_input_from_the_image():
    assert count_params(meta_model("linreg", image_size=28, in_channels=1)) == 28 * 28 + 1
    assert count_params(meta_model("softmax", 10, image_size=28, in_channels=1)) == 28 * 28 * 10 + 10
    assert count_params(meta_model("linreg", in_features=2)) == 3
    mlp = meta_model("mlp", 10, image_size=28, in_channels=1, hidden=(256, 128))
    assert count_params(mlp) == (784 * 256 + 256) + (256 * 128 + 128) + (128 * 10 + 10)


def test_registry_lists_every_seed_model():
    names = set(list_models())
    for base in ("vgg11", "vgg11_lrn", "vgg13", "vgg16c", "vgg16", "vgg19"):
        assert {base, base + "_bn"} <= names
    assert {"linreg", "softmax", "mlp", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} <= names


@pytest.mark.parametrize("alias,name", [("A", "vgg11"), ("A-LRN", "vgg11_lrn"), ("B", "vgg13"), ("C", "vgg16c"),
                                        ("D", "vgg16"), ("E", "vgg19"), ("a-lrn", "vgg11_lrn"), ("VGG16", "vgg16")])
def test_paper_letters_are_aliases(alias, name):
    assert model_info(alias).name == name


def _shape_cases():
    for name in list_models():
        family = model_info(name).family
        variants = {"vgg": [{"head": "cifar"}, {"head": "imagenet"}],
                    "resnet": [{"stem": "cifar"}, {"stem": "imagenet"}]}.get(family, [{}])
        for options in variants:
            yield name, options


@pytest.mark.parametrize("name,options", list(_shape_cases()))
def test_output_shapes_at_32_64_and_224(name, options):
    flat = not model_info(name).takes_images
    cifar_sized = "cifar" in options.values()
    torch.manual_seed(0)
    model = None if flat else create_model(name, 7, **options).eval()
    for size in (32, 64, 224):
        if cifar_sized and size == 224 and ("vgg" in name or name in ("resnet101", "resnet152")):
            continue  # a CIFAR head/stem at 224 costs 10–50× the FLOPs and checks nothing new
        if flat:
            model = create_model(name, 7, image_size=size, **options).eval()
        with torch.no_grad():
            y = model(torch.randn(2, 3, size, size))
        assert y.shape == ((2, 1) if name == "linreg" else (2, 7)), (name, options, size)
        assert torch.isfinite(y).all()


def test_builders_return_cpu_float32_modules():
    model = create_model("resnet18", 10, stem="cifar")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_bn_variants_put_batch_norm_after_every_conv():
    model = create_model("vgg16c_bn", 10, head="cifar")
    layers = list(model.features)
    convs = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    assert all(isinstance(layers[i + 1], torch.nn.BatchNorm2d) for i in convs)
    # Configuration C: the last conv of stages 3–5 is 1×1.
    assert [layers[i].kernel_size for i in convs].count((1, 1)) == 3


def test_lrn_sits_after_the_first_conv_only():
    layers = list(create_model("vgg11_lrn", 10).features)
    lrn = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.LocalResponseNorm)]
    assert lrn == [2]  # conv, ReLU, LRN, max-pool …
    assert isinstance(layers[0], torch.nn.Conv2d)


def test_resnet_uses_projection_shortcuts_exactly_where_the_shape_changes():
    model = create_model("resnet18", 10)
    projected = [n for n, m in model.named_modules() if n.endswith("downsample") and m is not None]
    assert projected == ["layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"]
    conv, bn = model.layer2[0].downsample
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(bn, torch.nn.BatchNorm2d)
    # Bottlenecks widen 64 → 256 in stage 1 without halving: projected, stride 1.
    assert model_info("resnet50").builder(num_classes=10).layer1[0].downsample[0].stride == (1, 1)


def test_cifar_stem_keeps_resolution_imagenet_stem_divides_by_four():
    x = torch.randn(1, 3, 32, 32)
    for stem, size in (("cifar", 32), ("imagenet", 8)):
        model = create_model("resnet18", 10, stem=stem).eval()
        stem_out = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        assert stem_out.shape[-1] == size


def test_zero_init_residual_starts_blocks_as_identity():
    model = create_model("resnet50", 10, zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for stage in (model.layer1, model.layer4) for b in stage)


def test_mlp_options_build_the_layers_asked_for():
    model = create_model("mlp", 10, image_size=28, in_channels=1, hidden=[64, 32], activation="tanh",
                         dropout=0.2, batch_norm=True)
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "Tanh", "Dropout",
                     "Linear", "BatchNorm1d", "Tanh", "Dropout", "Linear"]


def test_dropout_option_reaches_the_layers():
    model = create_model("vgg11", 10, dropout=0.3)
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.3, 0.3]


@pytest.mark.parametrize("call,needle", [
    (lambda: create_model("vgg12"), "vgg11, vgg11_bn"),
    (lambda: create_model("vgg11", head="tiny"), "imagenet, cifar"),
    (lambda: create_model("resnet18", stem="mnist"), "imagenet, cifar"),
    (lambda: create_model("vgg11", dropout=-0.1), "[0, 1)"),
    (lambda: create_model("mlp", dropout=1.0), "[0, 1)"),
    (lambda: create_model("mlp", activation="gelu"), "relu, sigmoid, tanh"),
    (lambda: create_model("resnet18", head="cifar"), "stem, zero_init_residual"),
    (lambda: create_model("vgg11", num_classes=0), "positive integer"),
    (lambda: create_model("mlp", hidden=[64, -1]), "positive integer"),
    (lambda: create_model("vgg11", in_channels=1, image_size=28), "at least 32×32"),
    (lambda: create_model("resnet18", image_size=0), "image_size must be a positive integer"),
    (lambda: create_model("speednet", in_channels=0), "in_channels must be a positive integer"),
    (lambda: create_model("softmax", in_features=0), "in_features must be a positive integer"),
    (lambda: create_model("mlp", batch_norm="yes"), "batch_norm must be true or false"),
    (lambda: create_model("speednet", hidden=[64, 0, 64]), "three positive group widths"),
    (lambda: create_model("speednet", hidden=[64, 64]), "three positive group widths"),
])
def test_bad_options_raise_an_error_naming_the_valid_choices(call, needle):
    with pytest.raises(CnnlabError) as info:
        call()
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_checked_options_reach_the_builder_in_its_own_form():
    assert [m.out_features for m in create_model("mlp", in_features=4, hidden=8).layers[1:2]] == [8]
    assert create_model("resnet18", zero_init_residual=1).layer1[0].bn2.weight.count_nonzero() == 0


@pytest.mark.parametrize("name", list_models())
def test_spec_says_whether_a_model_takes_images_and_wants_channels_last(name):
    spec = model_info(name)
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in meta_model(name).modules())
    assert spec.takes_images == convolutional
    assert spec.channels_last == convolutional  # NHWC speeds up convolutions only


def test_vgg_without_batch_norm_starts_with_logits_that_can_learn():
    # With the paper's N(0, 0.01²) FC init the logits started at std 0.006 and VGG-11 did not leave chance in 140
    # steps on CIFAR-10 (RESULTS.md, "Default recipes"); He-initialised FC layers keep them near unit scale.
    torch.manual_seed(0)
    model = create_model("vgg11", 10, image_size=32, head="cifar").eval()
    with torch.no_grad():
        std = model(torch.randn(32, 3, 32, 32)).std().item()
    assert 0.05 < std < 5
