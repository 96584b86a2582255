"""The streaming ImageFolder loader: listing, transforms against torchvision, seeding, workers, bad inputs.

The loaders are built as training builds them (prepare.build_streamed_data): a StreamingImageFolder seeded with the
run's seed under a StreamLoader seeded with it too.
"""

import random
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import TrainConfig
from cnnlab.data import stream
from cnnlab.data.stream import (StreamingImageFolder, StreamLoader, decode_for_box, draft_factor, eval_transform,
                                list_image_folder, resized_crop, sample_crop_box, train_sample, train_transform)
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


def test_crop_box_draws_like_torchvision():
    # The boxes come from Python's random, not torch's generator, so the check is on the distribution: over 4,000
    # draws the area fraction, the aspect ratio and the offsets have torchvision's quartiles (to 0.02, about 3
    # standard errors of a quartile at this count).
    transforms = pytest.importorskip("torchvision.transforms")
    height, width, n = 375, 500, 4000
    rng = random.Random(0)
    ours = np.array([sample_crop_box(height, width, rng) for _ in range(n)], dtype=float)
    image = torch.empty(1, height, width)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = np.array([transforms.RandomResizedCrop.get_params(image, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
                           for _ in range(n)], dtype=float)

    def features(boxes):
        top, left, h, w = boxes.T
        return {"area": h * w / (height * width), "log aspect": np.log(w / h),
                "top": top / height, "left": left / width}

    for name, a in features(ours).items():
        b = features(theirs)[name]
        assert np.allclose(np.quantile(a, [0.25, 0.5, 0.75]), np.quantile(b, [0.25, 0.5, 0.75]), atol=0.02), name


@pytest.mark.parametrize("height, width", [(375, 500), (500, 375), (600, 600)])
def test_crop_box_scale_and_ratio_in_range(height, width):
    rng = random.Random(0)
    for _ in range(500):
        top, left, h, w = sample_crop_box(height, width, rng)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        # w and h are rounded to pixels, so allow the ~1% that half a pixel is at this size
        assert 0.08 * 0.98 <= h * w / (height * width) <= 1.0
        assert 3 / 4 * 0.98 <= w / h <= 4 / 3 * 1.02


def test_crop_box_falls_back_to_a_centered_crop_within_the_ratio():
    # No 10%-area box with a 3:4–4:3 shape fits a 1000×10 strip, so every try fails
    top, left, h, w = sample_crop_box(10, 1000, random.Random(0))
    assert (h, w) == (10, 13) and top == 0 and left == (1000 - 13) // 2


def test_train_transform_shape_and_seeding(split):
    img = Image.open(split / "cat" / "a.jpg")

    def run(seed):
        rng = random.Random(seed)
        return [train_transform(img, 224, rng) for _ in range(4)]

    first = run(0)
    assert all(t.shape == (3, 224, 224) and t.dtype == torch.uint8 for t in first)
    assert all(torch.equal(a, b) for a, b in zip(first, run(0)))
    assert not all(torch.equal(a, b) for a, b in zip(first, run(1)))
    assert train_transform(Image.open(split / "cat" / "c.jpeg"), 96).shape == (3, 96, 96)  # grayscale in


@pytest.mark.parametrize("seed", range(8))  # enough seeds to see both flip outcomes
def test_train_sample_matches_torchvision_on_the_same_box(split, seed):
    # The file's sample against torchvision's resized_crop (PIL, bilinear) + hflip of a full PIL decode, with the
    # box and flip our sample drew: torch's antialiased uint8 resize and PIL's round differently by at most 1.
    # The crops here are under 2×224, so no reduced-scale decode is involved (test_draft_* covers that).
    v2 = pytest.importorskip("torchvision.transforms.v2.functional")
    path = split / "dog" / "e.JPEG"
    data = path.read_bytes()
    img = Image.open(path)
    box = sample_crop_box(img.height, img.width, random.Random(seed))
    if draft_factor(box, 224) > 1:
        box = sample_crop_box(img.height, img.width, random.Random(seed + 100))
        seed += 100
    flip = random.Random(seed)
    sample_crop_box(img.height, img.width, flip)
    flip = flip.random() < 0.5
    assert draft_factor(box, 224) == 1
    top, left, h, w = box
    ref = v2.resized_crop(img.convert("RGB"), top, left, h, w, [224, 224], interpolation=v2.InterpolationMode.BILINEAR)
    ref = np.array(ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else ref)
    ours = train_sample(data, 224, random.Random(seed))
    assert ours.shape == (224, 224, 3) and ours.dtype == torch.uint8
    assert (ours.numpy().astype(int) - ref).__abs__().max() <= 1


def _photo(width, height, seed):
    """A photo-like image: smooth shapes and shading (a low-resolution random field upscaled), edges, mild grain."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                     Image.Resampling.BICUBIC)
    arr = np.array(field).astype(np.int16)
    arr[height // 3: height // 2, width // 4: width // 2] = rng.integers(0, 256, 3)  # a sharp-edged object
    arr += rng.normal(0, 3, arr.shape).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_draft_decoded_crops_match_a_full_decode_closely(tmp_path):
    # Crops that span ≥ 2×, 4× or 8× the output decode at 1/2, 1/4 or 1/8 scale (libjpeg's scaled IDCT, which
    # averages 2×2…8×8 blocks) before the same antialiased resize. Two differences from a full decode, checked
    # apart: (1) the box snaps to the reduced pixel grid, each edge by at most half a reduced pixel (under half an
    # output pixel: a random crop's position is random anyway); (2) on the snapped box, the pixels differ by the
    # two low-pass filters' shapes only: mean ≤ 1 grey level (of 255), 99th percentile ≤ 5 on photo-like content
    # (measured: mean 0.2–0.4, p99 1–2; against the unsnapped box the mean reaches 2.2, hence the two checks).
    path = tmp_path / "photo.jpg"
    _photo(1600, 1200, 0).save(path, quality=90)  # sides divisible by 8: reduced pixels map to whole pixels
    data = path.read_bytes()
    full = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    factors = set()
    for seed in range(12):
        box = (100 + 7 * seed, 60 + 11 * seed, 1000 - 55 * seed, 1300 - 70 * seed)  # h, w: 1000×1300 … 395×530
        factor = draft_factor(box, 160)
        factors.add(factor)
        drafted, (t, l, h, w) = decode_for_box(data, Image.open(path), box, 160)
        assert tuple(drafted.shape) == (3, 1200 // factor, 1600 // factor)
        snapped = (t * factor, l * factor, h * factor, w * factor)
        top, left, bottom, right = box[0], box[1], box[0] + box[2], box[1] + box[3]
        for edge, ours in zip((top, left, bottom, right), (t, l, t + h, l + w)):
            assert abs(ours * factor - edge) <= factor / 2
        fast = resized_crop(drafted, (t, l, h, w), 160, False).numpy().astype(int)
        slow = resized_crop(full, snapped, 160, False).numpy().astype(int)
        diff = np.abs(fast - slow)
        assert diff.mean() <= 1 and np.quantile(diff, 0.99) <= 5, (seed, box, diff.mean(), np.quantile(diff, 0.99))
    assert factors == {2, 4}


def _loader(root, *, train, batch_size=4, workers=0, seed=0, decode="cpu", **sizes):
    dataset = StreamingImageFolder(root, train, seed=seed, **sizes)
    return StreamLoader(dataset, range(len(dataset)), batch_size=batch_size, device="cpu", train=train,
                        mean=[0.5] * 3, std=[0.25] * 3, channels_last=False, workers=workers, seed=seed,
                        decode=decode)


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


def test_a_seeded_epoch_is_the_same_whatever_the_workers(split):
    # Each sample's crop and flip come from (epoch seed, image index): workers, persistence and the order of
    # decoding change nothing, and the second epoch of a persistent loader is a fresh loader's second epoch.
    inline = _loader(split, train=True, workers=0, seed=5)
    persistent = _loader(split, train=True, workers=2, seed=5)
    for epoch in range(2):
        a, b = _epoch(inline), _epoch(persistent)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), epoch
    assert persistent._loader.persistent_workers and persistent._loader is not None
    workers = persistent._loader._iterator._workers
    _epoch(persistent)
    assert persistent._loader._iterator._workers is workers  # the same processes served the third epoch


def test_resuming_inside_an_epoch_gives_its_remaining_batches(split):
    # The checkpoint's state (generator, epoch seed) and position (order, batch) restore the epoch's crops too.
    loader = _loader(split, train=True, batch_size=2, seed=2)
    _epoch(loader)
    batches = iter(loader)
    next(batches)
    state, order = loader.state_dict(), loader.order.clone()
    rest = list(batches)
    resumed = _loader(split, train=True, batch_size=2, seed=99)
    resumed.load_state_dict(state)
    resumed.resume_from(order, 1)
    again = list(resumed)
    assert len(again) == len(rest) == 2
    assert all(torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(rest, again))
    assert torch.equal(_epoch(resumed)[0], _epoch(loader)[0])  # and the epochs after it


WNIDS = ("n01440764", "n01443537")


def _jpeg_split(root, sizes=((300, 240), (200, 260), (256, 256), (320, 200), (240, 300))):
    for i, size in enumerate(sizes):
        folder = root / WNIDS[i % 2]  # ImageNet's layout, so that a run detects it
        folder.mkdir(parents=True, exist_ok=True)
        _photo(*size, i).save(folder / f"{i}.JPEG", quality=90)
    return root


def test_byte_path_decodes_on_the_device_like_the_cpu_path(tmp_path, monkeypatch):
    # decode="gpu" where it is available: the workers send JPEG bytes and boxes, the device decodes the batch and
    # crops each image with the CPU path's resized_crop. Here the "device" is the CPU (decode_jpeg on the CPU), so
    # both paths decode with the same libjpeg-turbo and must agree exactly, batch by batch (no crop here spans
    # 2×160, so none is draft-decoded on the CPU path); a PNG in the folder
    # is decoded and cropped in the worker and rides along decoded.
    pytest.importorskip("torchvision")
    root = _jpeg_split(tmp_path / "train")
    _noise((280, 220), "RGB", 9).save(root / WNIDS[0] / "z.png")
    monkeypatch.setattr(stream, "gpu_decode_problem", lambda device: None)
    cpu = _loader(root, train=True, batch_size=3, workers=0, seed=4, image_size=160, resize_size=160)
    gpu = _loader(root, train=True, batch_size=3, workers=2, seed=4, image_size=160, resize_size=160, decode="gpu")
    assert (cpu.decode, gpu.decode) == ("cpu", "gpu") and "on the device" in gpu.decode_note
    for _ in range(2):
        (x1, y1), (x2, y2) = _epoch(cpu), _epoch(gpu)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_byte_path_falls_back_to_the_cpu_and_says_why(split):
    loader = _loader(split, train=True, decode="gpu")
    assert loader.decode == "cpu" and loader.decode_note == ("JPEG decode: CPU workers (--decode gpu unavailable: "
                                                             "the device is cpu, not CUDA)")
    images, labels = _epoch(loader)
    assert images.shape == (6, 3, 224, 224) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert _loader(split, train=False, decode="gpu").decode_note is None  # evaluation always decodes on the CPU


def test_byte_path_names_a_file_the_device_cannot_decode(tmp_path):
    pytest.importorskip("torchvision")
    root = _jpeg_split(tmp_path / "train", sizes=((120, 100),))
    good = (root / WNIDS[0] / "0.JPEG").read_bytes()
    broken = good[:200] + bytes(300) + b"\xff\xd9"  # a JPEG header, garbage, an end marker
    params = torch.tensor([[0, 0, 0, 90, 90, 0], [7, 0, 0, 90, 90, 1]])
    payloads = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in (good, broken)]
    with pytest.raises(CnnlabError, match="cannot read image broken-7.jpg"):
        stream.decode_batch(payloads, params, 64, "cpu", paths=lambda i: f"broken-{i}.jpg")
    out = stream.decode_batch(payloads[:1], params[:1], 64, "cpu")
    assert out.shape == (1, 64, 64, 3) and out.dtype == torch.uint8


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
    assert image.shape == (64, 64, 3) and label == 1  # c.jpg, a dog
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


def test_a_run_with_decode_gpu_on_the_cpu_trains_and_logs_the_fallback(tmp_path, capsys):
    # The wiring: TrainConfig.decode reaches the training StreamLoader, and the run's log says which path ran.
    from cnnlab.engine import fit

    root = tmp_path / "imagenet"
    _jpeg_split(root / "train")
    _jpeg_split(root / "val")
    run = fit(TrainConfig(model="mlp", hidden=[8], dataset="imagenet", data=str(root), image_size=16,
                          resize_size=16, workers=0, epochs=1, batch_size=5, lr=0.01, val_split=0, decode="gpu",
                          out=str(tmp_path / "run")))
    assert (run.path / "summary.json").is_file()
    assert "JPEG decode: CPU workers (--decode gpu unavailable: the device is cpu, not CUDA)" in capsys.readouterr().out


@pytest.mark.parametrize("channels_last", [True, False])
def test_normalising_on_the_device_is_the_plain_formula(channels_last):
    # to_model_input normalises channels_last batches as rows against tiled statistics (fast on the CPU): the
    # values must be bit for bit those of (x - 255·mean) / (255·std) per channel, in the asked memory format.
    from cnnlab.data.loader import to_model_input

    x = torch.randint(0, 256, (3, 5, 7, 3), dtype=torch.uint8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = (x.permute(0, 3, 1, 2).float() - mean.view(1, 3, 1, 1) * 255) / (std.view(1, 3, 1, 1) * 255)
    out = to_model_input(x, mean, std, torch.float32, channels_last)
    assert torch.equal(out, expected) and out.shape == (3, 3, 5, 7)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert to_model_input(x[:0], mean, std, torch.float32, channels_last).shape == (0, 3, 5, 7)


def test_without_torchvision_jpegs_decode_through_pil(split, monkeypatch):
    # torchvision is optional: without it the same sample comes from PIL's decode (both are libjpeg-turbo here;
    # allow 1 level for a different build's rounding), and the GPU path reports what is missing.
    data = (split / "dog" / "e.JPEG").read_bytes()
    with_tv = train_sample(data, 224, random.Random(3))
    monkeypatch.setattr(stream, "_JPEG_DECODER", None)
    without = train_sample(data, 224, random.Random(3))
    assert (with_tv.int() - without.int()).abs().max() <= 1
    assert "torchvision is not installed" in stream.gpu_decode_problem("cuda")


def test_the_gpu_probe_names_why_cuda_decoding_is_unavailable():
    pytest.importorskip("torchvision")
    if torch.cuda.is_available():
        pytest.skip("this machine can decode on CUDA")
    assert stream.gpu_decode_problem("cuda").startswith("torchvision's decode_jpeg cannot decode on cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_decode_on_cuda_matches_the_cpu_path_closely(tmp_path):
    # nvJPEG's IDCT and colour conversion are not libjpeg-turbo's, and CUDA resizes floats where the CPU resizes
    # uint8: the same boxes and flips give batches a mean of ≤ 2 grey levels apart (normalised units here).
    pytest.importorskip("torchvision")
    root = _jpeg_split(tmp_path / "train")

    def loader(decode):
        dataset = StreamingImageFolder(root, True, 160, 160, seed=4)
        return StreamLoader(dataset, range(len(dataset)), batch_size=3, device="cuda", train=True, mean=[0, 0, 0],
                            std=[1, 1, 1], workers=2, seed=4, decode=decode)

    gpu = loader("gpu")
    assert gpu.decode == "gpu", gpu.decode_note
    (x1, y1), (x2, y2) = _epoch(loader("cpu")), _epoch(gpu)
    assert torch.equal(y1, y2) and x1.shape == x2.shape
    assert (x1 - x2).abs().mean().item() * 255 <= 2
