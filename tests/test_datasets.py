"""The one table of datasets (cnnlab.datasets) and the views the data package keeps of it."""

from cnnlab import data
from cnnlab.data import home, loader, official
from cnnlab.datasets import DATASETS


def test_every_dataset_with_files_has_a_data_home_copy_and_an_augmentation_unless_streamed():
    for spec in DATASETS.values():
        if spec.generated:
            assert not spec.copies and not spec.official, spec.name
            continue
        assert spec.copies, spec.name  # what `data list` and locate() look for
        assert spec.streamed or spec.name in loader.AUGMENT_PRESETS, spec.name


def test_an_official_archive_is_the_first_copy_the_data_home_takes():
    for spec in DATASETS.values():
        if len(spec.official) == 1:  # several files (MNIST's) go into the first copy's folder instead
            assert spec.copies[0].name == spec.official[0][0], spec.name


def test_the_old_names_are_views_of_the_table():
    assert data.DATASETS == tuple(DATASETS)
    assert data.STREAMED == ("imagenet",)
    assert data.CLASS_COUNTS == {"cifar10": (10,), "cifar100": (100, 20), "tinyimagenet": (200,), "mnist": (10,)}
    assert set(official.OFFICIAL) == {"cifar10", "cifar100", "tinyimagenet", "mnist"}
    assert set(home.COPIES) == set(DATASETS) - {"synthetic-linear"}
    assert official.known_md5()["c32a1d4ab5d03f1284b67883e8d87530"] == "cifar-10-binary.tar.gz"
