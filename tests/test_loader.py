"""The in-memory loader: batches, shuffling, batched augmentation and normalisation (on the CPU)."""

import numpy as np
import pytest
import torch

from cnnlab import CnnlabError
from cnnlab.data.loader import (Augment, DeviceLoader, augment_preset, channel_stats, cutout, random_crop,
                                random_flip)


def images(n=50, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_eval_loader_keeps_order_and_normalises_with_train_stats():
    x = images()
    loader = DeviceLoader(x, np.arange(50), batch_size=16)
    batches = list(loader)
    assert len(loader) == len(batches) == 4 and [len(y) for _, y in batches] == [16, 16, 16, 2]
    xb = torch.cat([b for b, _ in batches])
    assert xb.shape == (50, 3, 8, 8) and xb.is_contiguous(memory_format=torch.channels_last)
    assert torch.cat([y for _, y in batches]).tolist() == list(range(50))
    assert torch.allclose(xb.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(xb.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    mean, std = channel_stats(x)
    expected = (torch.tensor(x[3], dtype=torch.float32).permute(2, 0, 1) / 255 - torch.tensor(mean)[:, None, None]) \
        / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(xb[3], expected)


def test_channel_stats_match_numpy():
    x = images(20, 16, seed=1)
    mean, std = channel_stats(x)
    f = x.astype(np.float64) / 255
    assert np.allclose(mean, f.mean((0, 1, 2))) and np.allclose(std, f.std((0, 1, 2)))


def test_training_loader_draws_a_new_permutation_each_epoch_and_is_reproducible():
    def epochs(seed):
        loader = DeviceLoader(images(), np.arange(50), batch_size=10, train=True, seed=seed)
        return [torch.cat([y for _, y in loader]).tolist() for _ in range(2)]

    first, second = epochs(0)
    assert sorted(first) == list(range(50)) and first != second and first != list(range(50))
    assert epochs(0) == [first, second] and epochs(1) != [first, second]


def test_drop_last_and_bad_batch_size():
    assert len(DeviceLoader(images(), np.arange(50), batch_size=16, drop_last=True)) == 3
    with pytest.raises(CnnlabError, match="positive integer"):
        DeviceLoader(images(), np.arange(50), batch_size=0)


def test_loader_state_resumes_the_same_stream():
    loader = DeviceLoader(images(), np.arange(50), batch_size=10, train=True, augment=augment_preset("cifar10"))
    list(loader)
    state = loader.state_dict()
    expected = [(x.clone(), y.clone()) for x, y in loader]
    other = DeviceLoader(images(), np.arange(50), batch_size=10, train=True, augment=augment_preset("cifar10"),
                         seed=99)
    other.load_state_dict(state)
    resumed = list(other)
    assert len(resumed) == len(expected) == 5  # zip alone would pass a resumed loader that yields nothing
    for (x1, y1), (x2, y2) in zip(expected, resumed):
        assert torch.equal(y1, y2) and torch.equal(x1, x2)


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = torch.from_numpy(images(30, 8))
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (0, 0, 2, 2, 2, 2))
    offsets = set()
    for i in range(30):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(out[i], padded[i, dy:dy + 8, dx:dx + 8])]
        assert matches, i
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets differ between images


def test_flip_mirrors_about_half_the_images():
    x = torch.from_numpy(images(200, 4))
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(1)) for i in range(200)]
    kept = [torch.equal(out[i], x[i]) for i in range(200)]
    assert all(f or k for f, k in zip(flipped, kept)) and 70 < sum(flipped) < 130


def test_cutout_zeroes_one_square_per_image():
    x = torch.full((20, 16, 16, 3), 255, dtype=torch.uint8)
    out = cutout(x, 4, torch.Generator().manual_seed(0))
    zeros = (out[..., 0] == 0)
    for i in range(20):
        rows, cols = torch.nonzero(zeros[i], as_tuple=True)
        assert 0 < len(rows) <= 16
        assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
    assert (out[..., 0] == out[..., 1]).all()  # the same square in every channel


def test_augment_presets_and_overrides():
    assert augment_preset("cifar10") == Augment(4, True, 0)
    assert augment_preset("mnist").flip is False
    assert augment_preset("cifar10", cutout=8).cutout == 8
    with pytest.raises(CnnlabError, match="choose one of"):
        augment_preset("svhn")
    with pytest.raises(CnnlabError, match="unknown augmentation option"):
        augment_preset("cifar10", rotate=10)


def test_bf16_output_and_contiguous_layout():
    loader = DeviceLoader(images(), np.arange(50), batch_size=8, dtype=torch.bfloat16, channels_last=False)
    x, _ = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous()


def test_regression_features_are_batched_as_they_are():
    x = np.random.default_rng(0).standard_normal((30, 2)).astype(np.float32)
    y = x.sum(1, keepdims=True)
    xb, yb = next(iter(DeviceLoader(x, y, batch_size=30)))
    assert torch.equal(xb, torch.from_numpy(x)) and yb.shape == (30, 1)


def test_a_prepared_epoch_shows_every_image_once_shifted_and_normalised_in_two_slices_a_step():
    """Crops and flips done once per epoch over the whole set (issue 26): each step is a slice of the prepared set,
    each image appears once with its own label, as a mirrored-border window of itself, normalised."""
    x = images(n=40)
    augment = augment_preset("speedrun")  # 2-pixel reflect shifts, alternating flips
    loader = DeviceLoader(x, np.arange(40), batch_size=16, train=True, augment=augment, seed=5)
    assert loader.prepares_epochs
    mean, std = loader.mean[:, None, None], loader.std[:, None, None]
    raw = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    padded = torch.nn.functional.pad(raw, (2, 2, 2, 2), mode="reflect")
    for _ in range(2):
        batches = list(loader)
        assert [len(y) for _, y in batches] == [16, 16, 8]
        assert all(b.is_contiguous(memory_format=torch.channels_last) for b, _ in batches)
        labels = torch.cat([y for _, y in batches])
        assert sorted(labels.tolist()) == list(range(40))
        for image, label in zip(torch.cat([b for b, _ in batches]), labels):
            pixels = image * std + mean  # back to [0, 1]
            windows = [padded[label, :, dy:dy + 8, dx:dx + 8] / 255 for dy in range(5) for dx in range(5)]
            assert any(torch.allclose(pixels, w, atol=1e-5) or torch.allclose(pixels, w.flip(2), atol=1e-5)
                       for w in windows), int(label)


def test_augmentation_that_needs_each_batch_stays_per_batch():
    x = images(n=20)
    per_batch = [augment_preset("cifar10", cutout=4), augment_preset("cifar10", auto_augment="trivialaugment"),
                 augment_preset("cifar10", mixup=0.2)]
    for augment in per_batch:
        loader = DeviceLoader(x, np.arange(20), batch_size=8, train=True, augment=augment, num_classes=20)
        assert not loader.prepares_epochs, augment
        assert sum(len(y) for _, y in loader) == 20
    assert DeviceLoader(x, np.arange(20), batch_size=8, train=True, augment=augment_preset("cifar10")).prepares_epochs
    assert not DeviceLoader(x, np.arange(20), batch_size=8).prepares_epochs  # evaluation: nothing to prepare


def test_a_mid_epoch_state_from_a_per_batch_loader_resumes_with_fresh_draws():
    """Checkpoints of a cnnlab that augmented per batch carry no epoch draw state: the epoch goes on, same order."""
    x = images(n=40)
    loader = DeviceLoader(x, np.arange(40), batch_size=16, train=True, augment=augment_preset("speedrun"), seed=2)
    first = next(iter(loader))[1]
    state = {k: v for k, v in loader.state_dict().items() if k != "epoch_aug_state"}
    order = loader.order.clone()
    resumed = DeviceLoader(x, np.arange(40), batch_size=16, train=True, augment=augment_preset("speedrun"), seed=2)
    resumed.load_state_dict(state)
    resumed.resume_from(order, 1)
    rest = torch.cat([y for _, y in resumed])
    assert sorted(torch.cat([first, rest]).tolist()) == list(range(40))


@pytest.mark.parametrize("drop_last", [False, True])
def test_each_rank_prepares_only_its_share_of_every_batch(drop_last):
    """Under DDP a rank trains on [rank::world_size] of each global batch: it prepares just that, as contiguous
    slices, and the ranks' shares add up to the batches a single process would see (no skipped image prepared)."""
    x, labels = images(n=45), np.arange(45)

    def loader(rank, world_size):
        return DeviceLoader(x, labels, batch_size=16, train=True, augment=augment_preset("speedrun"), seed=3,
                            rank=rank, world_size=world_size, drop_last=drop_last)

    whole = [y for _, y in loader(0, 1)]
    ranks = [loader(rank, 3) for rank in range(3)]
    shares = [list(r) for r in ranks]
    assert [len(s) for s in shares] == [len(whole)] * 3
    for b, batch in enumerate(whole):
        assert [s[b][1].tolist() for s in shares] == [batch[rank::3].tolist() for rank in range(3)]
        assert all(s[b][0].is_contiguous(memory_format=torch.channels_last) for s in shares)
    mine = 6 + 6 + (0 if drop_last else 5)  # rank 0's share of batches of 16, 16 and (unless skipped) 13
    assert sum(len(y) for _, y in shares[0]) == ranks[0]._epoch_bounds[-1] == mine
    assert all(r._epoch_x is None for r in ranks)  # the prepared set is let go once the epoch has been trained


def test_the_last_epochs_set_is_let_go_before_the_next_is_made(monkeypatch):
    loader = DeviceLoader(images(n=40), np.arange(40), batch_size=16, train=True, augment=augment_preset("speedrun"))
    seen = []
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: seen.append(loader._epoch_x) or real_empty(*a, **k))
    batches = iter(loader)
    next(batches)  # an epoch abandoned part-way (a stop request) keeps its set until the next is prepared
    assert loader._epoch_x is not None
    loader.prepare_epoch()
    assert seen == [None, None]
