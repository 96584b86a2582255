"""A pickle reader that admits only what CIFAR's python format needs.

CIFAR's batches are pickled dicts of bytes, lists, ints and numpy arrays. Unpickling can call any importable
callable, so everything but numpy's array reconstruction is refused before it runs.
"""

import io
import pickle

from cnnlab.errors import CnnlabError

_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, "latin1")
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def load_pickle(data: bytes, where: str):
    """Unpickle `data` (from `where`, named in errors) admitting only dicts, lists, strings, numbers and arrays."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise CnnlabError(f"{where} is not a plain CIFAR pickle: it asks to call {e}, which cnnlab refuses "
                          "to run; use the official archive") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise CnnlabError(f"{where} is truncated or not a pickle ({type(e).__name__}); "
                          "download or repack it again") from None
