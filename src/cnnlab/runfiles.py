"""The names of the files in a run folder, one place for the code that writes them (runfolder.py, engine.py,
evaluate.py) and the code that reads them back (report/). Adding a file a report shows is a name here.

Torch-free and importing nothing: the bottom of the package, beside config.py.
"""

CONFIG = "config.toml"  # the resolved settings; a resumed run reads them back
METRICS = "metrics.csv"  # one row per epoch: the truth plots and tables are built from
SUMMARY = "summary.json"  # written when a run finishes
LOG = "log.txt"
LAST = "last.pt"  # the checkpoint a run resumes from
BEST = "best.pt"  # the best validation epoch's, which the test split is evaluated on
CURVES = "curves.png"
FILTERS = "filters.png"  # `cnnlab eval`: the first layer's weights


# `cnnlab eval` writes one of each per split it evaluates (test or val); reports read the test split's.
def evaluation(split: str) -> str:
    return f"eval_{split}.json"


def confusion(split: str) -> str:
    return f"confusion_{split}.png"


def reliability(split: str) -> str:
    return f"reliability_{split}.png"


def mistakes(split: str) -> str:
    return f"mistakes_{split}.png"  # the most confident mistakes (gallery.py)


def predictions(split: str) -> str:
    return f"predictions_{split}.npz"
