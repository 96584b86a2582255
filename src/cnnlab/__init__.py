"""cnnlab: train, evaluate and compare the classic image classifiers."""

from cnnlab.errors import CnnlabError

__version__ = "0.1.0"

__all__ = ["CnnlabError", "create_model", "list_models", "model_info", "__version__"]


def __getattr__(name: str):
    # The model zoo imports torch (~1.5 s). Loading it on first use keeps `import cnnlab.data.images` light, which
    # every worker of a spawned decode pool (Windows, macOS) pays for.
    if name in ("create_model", "list_models", "model_info"):
        from cnnlab import models

        return getattr(models, name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
