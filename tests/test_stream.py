"""The streaming ImageFolder loader: listing, transforms against torchvision, seeding, workers, bad inputs.

The loaders are built as training builds them (prepare.build_streamed_data): a StreamingImageFolder seeded with the
run's seed under a StreamLoader seeded with it too.
"""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import TrainConfig
from cnnlab.data.stream import (StreamingImageFolder, StreamLoader, eval_transform, list_image_folder, sample_crop_box,
                                train_transform)
from cnnlab.errors import CnnlabError

# (class, file name, (width, height), mode); sizes on both sides of 224 and 256, both orientations
IMAGES = [
    ("cat", "a.jpg", (300, 200), "RGB"),
    ("cat", "b.PNG", (100, 400), "RGB"),
    ("cat", "c.jpeg", (250, 260), "L"),
    ("dog", "d.png", (256, 320), "RGBA"),
    ("dog", "e.JPEG", (640, 480), "CMYK"),
    ("dog", "f.bmp", (180, 180), "RGB"),
]


def _noise(size, mode, seed):
    # Noise, not flat colour, so that any shift of a crop or a flip changes the pixels
    w, h = size
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    if mode == "RGBA":
        arr[..., 3] = 255
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet") / "train"
    for i, (cls, name, size, mode) in enumerate(IMAGES):
        (root / cls).mkdir(parents=True, exist_ok=True)
        _noise(size, mode, i).save(root / cls / name, quality=95)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "._a.jpg").write_bytes(b"macOS resource fork")
    (root / ".ipynb_checkpoints").mkdir()
    return root


def _one_line_error(func, *args, match):
    with pytest.raises(CnnlabError, match=match) as info:
        func(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_listing_is_sorted_and_ignores_non_images(split):
    samples, classes = list_image_folder(split)
    assert classes == ["cat", "dog"]
    names = [(p.split("/")[-2], p.split("/")[-1], label) for p, label in samples]
    assert names == [("cat", "a.jpg", 0), ("cat", "b.PNG", 0), ("cat", "c.jpeg", 0),
                     ("dog", "d.png", 1), ("dog", "e.JPEG", 1), ("dog", "f.bmp", 1)]


def test_listing_errors_say_what_is_wrong(tmp_path):
    _one_line_error(list_image_folder, tmp_path / "missing", match="does not exist")
    _one_line_error(list_image_folder, tmp_path, match="no class folders")
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("x")
    _one_line_error(list_image_folder, tmp_path, match="no images")


@pytest.mark.parametrize("cls, name, size, mode", IMAGES)
def test_eval_transform_matches_torchvision(split, cls, name, size, mode):
    v2 = pytest.importorskip("torchvision.transforms.v2.functional")
    img = Image.open(split / cls / name)
    out = eval_transform(img)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    ref = v2.center_crop(v2.resize(img.convert("RGB"), [256], interpolation=v2.InterpolationMode.BILINEAR), [224])
    ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1)
    assert (out.int() - ref.int()).abs().max() <= 1


def test_eval_transform_is_a_center_crop_when_no_resize_is_needed():
    # Short side already 64: the result must be the middle 48×48 of the array, computed here by hand
    img = _noise((64, 90), "RGB", 7)
    out = eval_transform(img, image_size=48, resize_size=64)
    top, left = round((90 - 48) / 2), round((64 - 48) / 2)
    expected = np.array(img)[top:top + 48, left:left + 48].transpose(2, 0, 1)
    assert torch.equal(out, torch.from_numpy(np.ascontiguousarray(expected)))


def test_crop_box_matches_torchvision_draws():
    transforms = pytest.importorskip("torchvision.transforms")
    for seed in range(50):
        for height, width in [(200, 300), (400, 100), (10, 1000), (37, 41)]:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                ref = transforms.RandomResizedCrop.get_params(torch.empty(1, height, width),
                                                              scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
            ours = sample_crop_box(height, width, generator=torch.Generator().manual_seed(seed))
            assert ours == tuple(ref), (seed, height, width)


@pytest.mark.parametrize("height, width", [(375, 500), (500, 375), (600, 600)])
def test_crop_box_scale_and_ratio_in_range(height, width):
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        top, left, h, w = sample_crop_box(height, width, generator=g)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        # w and h are rounded to pixels, so allow the ~1% that half a pixel is at this size
        assert 0.08 * 0.98 <= h * w / (height * width) <= 1.0
        assert 3 / 4 * 0.98 <= w / h <= 4 / 3 * 1.02


def test_crop_box_falls_back_to_a_centered_crop_within_the_ratio():
    # No 10%-area box with a 3:4–4:3 shape fits a 1000×10 strip, so every try fails
    top, left, h, w = sample_crop_box(10, 1000, generator=torch.Generator().manual_seed(0))
    assert (h, w) == (10, 13) and top == 0 and left == (1000 - 13) // 2


def test_train_transform_shape_and_seeding(split):
    img = Image.open(split / "cat" / "a.jpg")

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return [train_transform(img, 224, g) for _ in range(4)]

    first = run(0)
    assert all(t.shape == (3, 224, 224) and t.dtype == torch.uint8 for t in first)
    assert all(torch.equal(a, b) for a, b in zip(first, run(0)))
    assert not all(torch.equal(a, b) for a, b in zip(first, run(1)))
    assert train_transform(Image.open(split / "cat" / "c.jpeg"), 96).shape == (3, 96, 96)  # grayscale in


def test_train_transform_matches_torchvision_pipeline(split):
    transforms = pytest.importorskip("torchvision.transforms")
    img = Image.open(split / "dog" / "e.JPEG").convert("RGB")
    reference = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()])
    for seed in range(6):  # enough seeds to see both flip outcomes
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            ref = torch.from_numpy(np.array(reference(img))).permute(2, 0, 1)
        assert torch.equal(train_transform(img, 224, torch.Generator().manual_seed(seed)), ref)


def _loader(root, *, train, batch_size=4, workers=0, seed=0, **sizes):
    dataset = StreamingImageFolder(root, train, seed=seed, **sizes)
    return StreamLoader(dataset, range(len(dataset)), batch_size=batch_size, device="cpu", train=train,
                        mean=[0.5] * 3, std=[0.25] * 3, channels_last=False, workers=workers, seed=seed)


def _epoch(loader):
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches(split, workers):
    images, labels = _epoch(_loader(split, train=True, workers=workers, seed=3))
    assert images.shape == (6, 3, 224, 224) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    again = _epoch(_loader(split, train=True, workers=workers, seed=3))
    assert torch.equal(again[0], images) and torch.equal(again[1], labels)

    evaluation = list(_loader(split, train=False, workers=workers))
    assert [len(y) for _, y in evaluation] == [4, 2]
    assert torch.cat([y for _, y in evaluation]).tolist() == [0, 0, 0, 1, 1, 1]


def test_loader_epochs_and_seeds_differ(split):
    loader = _loader(split, train=True, batch_size=6, seed=0)
    epoch1, epoch2 = _epoch(loader)[0], _epoch(loader)[0]
    other = _epoch(_loader(split, train=True, batch_size=6, seed=1))[0]
    assert not torch.equal(epoch1, epoch2) and not torch.equal(epoch1, other)


@pytest.fixture
def split_with_bad(tmp_path):
    root = tmp_path / "val"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    _noise((120, 90), "RGB", 0).save(root / "cat" / "a.jpg")
    (root / "cat" / "b_garbage.jpg").write_bytes(b"this is not a jpeg")
    _noise((90, 120), "RGB", 1).save(root / "dog" / "c.jpg")
    whole = (root / "dog" / "c.jpg").read_bytes()
    (root / "dog" / "d_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    return root


def test_corrupt_image_error_names_the_file(split_with_bad):
    ds = StreamingImageFolder(split_with_bad, train=False, image_size=64, resize_size=72)
    for index, name in [(1, "b_garbage.jpg"), (3, "d_truncated.jpg")]:
        message = _one_line_error(ds.__getitem__, index, match="--skip-bad-images")
        assert name in message


def test_skip_bad_images_substitutes_the_next_readable_sample(split_with_bad):
    ds = StreamingImageFolder(split_with_bad, train=True, image_size=64, resize_size=72, skip_bad_images=True)
    with pytest.warns(UserWarning, match="b_garbage.jpg"):
        image, label = ds[1]
    assert image.shape == (3, 64, 64) and label == 1  # c.jpg, a dog
    with pytest.warns(UserWarning, match="d_truncated.jpg"):
        assert ds[3][1] == 0  # wraps around to a.jpg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[1]  # a known bad file is skipped without decoding or warning again
    assert ds.skipped == 3 and {p.rsplit("/", 1)[-1] for p in ds.bad_paths} == {"b_garbage.jpg",
                                                                                "d_truncated.jpg"}
    loader = _loader(split_with_bad, train=False, skip_bad_images=True, image_size=64, resize_size=72)
    with pytest.warns(UserWarning):
        (images, labels), = list(loader)
    assert images.shape == (4, 3, 64, 64) and labels.tolist() == [0, 1, 1, 0]  # b → c.jpg, d → a.jpg


def test_bad_settings_are_rejected(split):
    _one_line_error(StreamingImageFolder, split, False, 224, 200, match="resize_size")
    _one_line_error(StreamingImageFolder, split, False, 0, match="image_size")
    # The loader's own settings are checked with the run's, before any loader is built.
    _one_line_error(TrainConfig(model="resnet18", batch_size=0).validate, match="--batch-size")
    _one_line_error(TrainConfig(model="resnet18", workers=-1).validate, match="--workers")
