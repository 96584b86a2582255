"""`cnnlab sweep FILE.toml`: a base configuration × named variants × a grid × seeds, run one after another.

    [sweep]                      # where, and which seeds
    out = "runs/ablation"
    seeds = [0, 1, 2]
    [base]                       # any TrainConfig fields
    model = "mlp"
    [[variant]]                  # optional: named sets of overrides (an ablation's rows)
    name = "dropout"
    dropout = 0.5
    [grid]                       # optional: every combination of these values
    momentum = [0.0, 0.9]

Each run goes to OUT/<variant>-<field=value…>-seed<k>/. Started again, a sweep skips runs that finished (they have
summary.json), resumes the one that was interrupted, and restarts one killed before its first checkpoint.
"""

import itertools
import re
import shutil
import tomllib
from pathlib import Path

from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError


def _name_part(key: str, value) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", f"{key}={text}")


def plan(path) -> tuple[Path, list[tuple[str, TrainConfig]]]:
    """(sweep folder, [(run name, config)]) from a sweep file; every config validated before anything runs."""
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CnnlabError(f"sweep file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CnnlabError(f"{path} is not valid TOML ({e})") from None
    unknown = sorted(set(spec) - {"sweep", "base", "variant", "grid", "report"})
    if unknown:
        raise CnnlabError(f"{path}: unknown table [{unknown[0]}]; a sweep has [sweep], [base], [[variant]], [grid]")
    settings = spec.get("sweep", {})
    out = Path(settings.get("out", f"runs/{path.stem}"))
    seeds = settings.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise CnnlabError(f"{path}: [sweep] seeds must be a non-empty list of integers")
    base = spec.get("base", {})
    variants = spec.get("variant", [{}])
    grid = spec.get("grid", {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise CnnlabError(f"{path}: [grid] {key} must be a non-empty list of values")
    runs = []
    for variant in variants:
        variant = dict(variant)
        label = str(variant.pop("name", ""))
        for combo in itertools.product(*grid.values()) if grid else [()]:
            overrides = dict(zip(grid, combo))
            parts = ([re.sub(r"[^A-Za-z0-9_.-]", "_", label)] if label else []) + [
                _name_part(k, v) for k, v in overrides.items()]
            for seed in seeds:
                values = {**base, **variant, **overrides, "seed": seed}
                name = "-".join(parts + [f"seed{seed}"])
                config = TrainConfig.from_dict(values, f"{path} ({name})")
                config.out = str(out / name)
                runs.append((name, config.validate()))
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        raise CnnlabError(f"{path}: two runs would share a folder name; give each [[variant]] a distinct name")
    return out, runs


def run_sweep(path, report: bool = True, log=print) -> Path:
    """Run every planned run that has not finished; then write the sweep's report into OUT/report/."""
    from cnnlab.engine import fit

    out, runs = plan(path)
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, config) in enumerate(runs, 1):
        folder = Path(config.out)
        if (folder / "summary.json").is_file():
            log(f"[{i}/{len(runs)}] {name}: done earlier, skipped")
            continue
        if (folder / "last.pt").is_file():
            log(f"[{i}/{len(runs)}] {name}: resuming")
            fit(None, resume=str(folder))
            continue
        if folder.exists():  # stopped before its first checkpoint: nothing to keep
            shutil.rmtree(folder)
        log(f"[{i}/{len(runs)}] {name}")
        fit(config)
    if report:
        from cnnlab.report import write_report

        target = write_report([Path(c.out) for _, c in runs], out / "report")
        log(f"report: {target}")
    return out
