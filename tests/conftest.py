"""Every test starts with an empty data home, whatever the machine's $CNNLAB_DATA (the Makefile points it at the
shared data sets): a test that needs data writes it, or names the shared files itself."""

import pytest


@pytest.fixture(autouse=True)
def empty_data_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("data-home")
    monkeypatch.setenv("CNNLAB_DATA", str(home))
    return home
