"""The report of a `cnnlab tune` study, built from the study (trials, states, values, settings) and each trial's
metrics.csv: the best trial and its settings, the objective over the trials (pruned ones marked), the validation
curves, each setting against the objective and Optuna's parameter importances. Written as OUT/report/index.html and
study.md with their PNGs, by the same renderer as `cnnlab report`.
"""

import math
import warnings
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.monitor import Monitor
from cnnlab.report.page import png, render_html, render_markdown
from cnnlab.runfolder import RunFolder

MIN_TRIALS_FOR_IMPORTANCE = 3  # below this fANOVA splits the credit evenly, which reads like a finding
STATE_NAMES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
               "WAITING": "waiting"}


def write_study_report(study, out_dir, objective: str) -> Path:
    """Write out_dir/index.html (self-contained) and out_dir/study.md (+ PNGs); return the index.html path."""
    if study is None:
        raise CnnlabError("no study to report on yet: run `cnnlab tune FILE` first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks = study_blocks(study, objective)
    for block in blocks:
        if block[0] == "img":
            (out / block[1]).write_bytes(block[2])
    (out / "study.md").write_text(render_markdown(blocks), encoding="utf-8")
    index = out / "index.html"
    index.write_text(render_html(blocks), encoding="utf-8")
    return index


def study_blocks(study, objective: str) -> list[tuple]:
    """The report's content as page.py's blocks (heading, paragraph, table, image)."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    counts = {}
    for t in trials:
        counts[STATE_NAMES[t.state.name]] = counts.get(STATE_NAMES[t.state.name], 0) + 1
    blocks = [("h1", f"Study {study.study_name}: {objective}"),
              ("p", f"{len(trials)} trials: " + ", ".join(f"{n} {state}" for state, n in counts.items())
               + f"; {objective} is {'minimised' if Monitor(objective).lower_is_better else 'maximised'} on the "
               "validation split, each trial's best epoch.")]
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    if not finished:
        return blocks + [("note", "No trial has finished yet.")]
    best = study.best_trial
    blocks += [("h2", f"Best trial: {best.number}"),
               ("p", f"{objective} {best.value:.6g}; run folder {best.user_attrs.get('run', '?')} (its config.toml "
                     "re-runs it: cnnlab train --config RUN/config.toml --out NEW)"),
               ("table", [{"setting": k, "value": _text(v)} for k, v in best.params.items()])]
    curves = {t.number: _metrics(t) for t in trials}
    blocks += [("h2", "Trials"), ("table", [_row(t, objective, curves[t.number]) for t in trials]),
               ("h2", "Objective by trial"), ("img", "objective.png", png(_objective_plot(trials, objective)),
                                              f"{objective} of each trial, pruned trials marked"),
               ("h2", "Validation curves"), ("img", "curves.png", png(_curve_plot(trials, curves, objective)),
                                             f"{objective} per epoch of every trial, from metrics.csv"),
               ("h2", "Each setting against the objective"),
               ("img", "params.png", png(_param_plot(trials, objective)), f"{objective} against each setting")]
    blocks += _importance_blocks(study)
    return blocks


def _metrics(trial) -> list[dict]:
    run = trial.user_attrs.get("run")
    if not run or not (Path(run) / "metrics.csv").is_file():
        return []
    return RunFolder(Path(run)).metrics()


def _row(trial, objective: str, rows: list[dict]) -> dict:
    value = trial.value if trial.value is not None else (
        trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None)
    return {"trial": trial.number, "state": STATE_NAMES[trial.state.name], f"best_{objective}": value,
            "epochs": len(rows), **{k: _text(v) for k, v in trial.params.items()},
            "run": trial.user_attrs.get("run", "")}


def _text(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _objective_plot(trials, objective: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    monitor = Monitor(objective)
    done = [(t.number, t.value) for t in trials if t.state.name == "COMPLETE"]
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in trials
              if t.state.name == "PRUNED" and t.intermediate_values]
    if done:
        ax.scatter(*zip(*done), label="complete", color="tab:blue")
        best, line = None, []
        for number, value in sorted(done):
            best = value if best is None or monitor.beats(value, best) else best
            line.append((number, best))
        ax.step(*zip(*line), where="post", color="tab:blue", alpha=0.5, label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned), marker="x", color="tab:red", label="pruned (last reported epoch)")
    _objective_axis(ax, trials, objective)
    ax.set(xlabel="trial", ylabel=objective)
    ax.legend()
    return fig


def _curve_plot(trials, curves: dict, objective: str):
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for t in trials:
        points = [(int(r["epoch"]), float(r[objective])) for r in curves[t.number] if r.get(objective)]
        if points:
            ax.plot(*zip(*points), marker=".", alpha=0.7, linestyle="--" if t.state.name == "PRUNED" else "-",
                    color="tab:red" if t.state.name == "PRUNED" else "tab:blue")
    _objective_axis(ax, trials, objective)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=objective, title="solid: complete, dashed: pruned")
    return fig


def _param_plot(trials, objective: str):
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(k for t in trials for k in t.params))
    fig = Figure(figsize=(4 * max(1, len(names)), 3.5), layout="constrained")
    for k, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), k + 1)
        distribution = next((t.distributions[name] for t in trials if name in t.distributions), None)
        choices = getattr(distribution, "choices", None)  # a choice: one tick per value, in the file's order
        for state, style in (("COMPLETE", {"color": "tab:blue", "label": "complete"}),
                             ("PRUNED", {"color": "tab:red", "marker": "x", "label": "pruned (last epoch)"})):
            points = [(t.params[name], _value(t)) for t in trials
                      if t.state.name == state and name in t.params and _value(t) is not None]
            if points:
                xs, ys = zip(*points)
                ax.scatter([choices.index(x) for x in xs] if choices else xs, ys, **style)
        if choices:
            ax.set_xticks(range(len(choices)), [str(c) for c in choices])
            ax.set_xlim(-0.5, len(choices) - 0.5)
        elif getattr(distribution, "log", False):
            ax.set_xscale("log")
        _objective_axis(ax, trials, objective)
        ax.set(xlabel=name, ylabel=objective if k == 0 else None)
    if names and fig.axes[0].collections:
        fig.axes[0].legend()
    return fig


def _objective_axis(ax, trials, objective: str) -> None:
    """Losses of a study often span decades (a hopeless lr against a good one): a log axis where all are > 0."""
    values = [v for v in map(_value, trials) if v is not None]
    if Monitor(objective).lower_is_better and values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")


def _value(trial):
    if trial.value is not None:
        return trial.value
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def _importance_blocks(study) -> list[tuple]:
    """Optuna's parameter importances (fANOVA over the complete trials; pruned ones are left out, as Optuna does);
    a note where too few trials allow it."""
    import optuna
    from matplotlib.figure import Figure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as e:
        return [("h2", "Parameter importances"), ("note", f"Not computed: {e}")]
    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if complete < MIN_TRIALS_FOR_IMPORTANCE or not importances or any(math.isnan(v) for v in importances.values()):
        return [("h2", "Parameter importances"),
                ("note", f"Not computed: {complete} complete trials; they need {MIN_TRIALS_FOR_IMPORTANCE} or more.")]
    fig = Figure(figsize=(6, 0.5 + 0.4 * len(importances)), layout="constrained")
    ax = fig.add_subplot()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel="importance (fANOVA, sums to 1)")
    return [("h2", "Parameter importances"),
            ("p", f"From the {complete} complete trials."),
            ("table", [{"setting": k, "importance": round(v, 3)} for k, v in importances.items()]),
            ("img", "importances.png", png(fig), "parameter importances")]
