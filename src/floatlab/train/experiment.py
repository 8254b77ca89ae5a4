"""The multi-recipe experiment: runs, then ``summary.json``, ``curves.csv`` and ``loss.png``."""

from __future__ import annotations

import csv
import statistics
from dataclasses import asdict
from pathlib import Path

from floatlab.nn.recipe import Recipe
from floatlab.nn.recipes import get_recipe
from floatlab.train.checkpoint import FILENAME, load_checkpoint
from floatlab.train.data import Corpus
from floatlab.train.loop import (RunResult, canonical_master, check_resumable, describe, dist_info,
                                 run_config, train_run)
from floatlab.train.presets import Preset


def resolve_recipes(recipes) -> list[Recipe]:
    """The recipes of an experiment: ``bf16`` (the baseline) first, then ``recipes`` (names,
    files or :class:`Recipe` objects) in order, duplicates dropped. Raises ``ValueError`` for an
    unknown name or a bad file (``FileNotFoundError`` for a missing one), and when two different
    recipes share a name (their runs would share a folder)."""
    out: dict[str, Recipe] = {}
    for r in ["bf16", *recipes]:
        recipe = get_recipe(r)
        if recipe.name in out and out[recipe.name] != recipe:
            what = f"recipe file {str(r)!r}" if not isinstance(r, Recipe) else "a Recipe object"
            first = "the built-in baseline" if recipe.name == "bf16" else "another recipe given before it"
            raise ValueError(f"the {what} is named {recipe.name!r} like {first} but differs from it; runs "
                             "are stored by recipe name, so give it another 'name'")
        out[recipe.name] = recipe
    return list(out.values())


def plan_runs(recipes: list[Recipe], seeds, preset: Preset, out: Path, corpus: Corpus,
              master: str | None = None, fresh: bool = False,
              options=None) -> dict[tuple[str, int], str]:
    """What each (recipe, seed) run will do, checked before any training: ``"new"``,
    ``"reused"`` (finished with the same settings), ``"resumed at step k"`` or ``"extended from
    step k"`` (a finished run continued to more steps, see :func:`check_resumable`).

    Raises :class:`~floatlab.train.checkpoint.ConfigMismatch` for the first run folder holding a
    checkpoint made with other settings (unless ``fresh``), so nothing is trained when any run
    cannot continue.
    """
    master = canonical_master(master)
    corpus.check(preset.model.block_size)
    plan = {}
    for recipe in recipes:
        for seed in seeds:
            run_dir = Path(out) / "runs" / recipe.name / f"seed{seed}"
            ckpt = None if fresh else load_checkpoint(run_dir / FILENAME, mmap=True)
            if ckpt is None:
                plan[recipe.name, seed] = "new"
                continue
            step = check_resumable(ckpt, run_config(recipe, seed, preset, master, corpus, options),
                                   preset, run_dir)
            if step == preset.steps:
                plan[recipe.name, seed] = "reused"
            elif ckpt["result"]["done"]:
                plan[recipe.name, seed] = f"extended from step {step}"
            else:
                plan[recipe.name, seed] = f"resumed at step {step}"
    return plan


def run_experiment(recipes: list, seeds: list[int], preset: Preset, out: Path,
                   corpus: str | Corpus = "pydoc", master: str | None = None, progress=None,
                   device: str = "cpu", fresh: bool = False, options=None) -> dict:
    """Train every (recipe, seed) under ``out/runs/<recipe>/seed<k>/``, then write the summary,
    the curves and the plot. bf16 is always included, as the baseline.

    ``recipes``: built-in names, recipe files or :class:`Recipe` objects. Every run folder is
    checked first (:func:`plan_runs`): finished runs with the same configuration are reused,
    interrupted ones resumed; a checkpoint made with other settings stops the experiment before
    any training with :class:`~floatlab.train.checkpoint.ConfigMismatch`, unless ``fresh=True``
    (every run starts from step 0, replacing its checkpoint). ``progress(name, seed, total)``
    may return a per-step callback ``(step, loss)``. ``options``
    (:class:`~floatlab.train.options.TrainOptions`) apply to every run, the bf16 baseline included.

    Returns the summary (also written to ``out/summary.json``, with the environment).
    """
    out = Path(out)
    resolved = resolve_recipes(recipes)
    data = corpus if isinstance(corpus, Corpus) else Corpus.load(corpus)
    plan_runs(resolved, seeds, preset, out, data, master, fresh, options)
    results: dict[str, list[RunResult]] = {}
    for recipe in resolved:
        for seed in seeds:
            cb = progress(recipe.name, seed, preset.steps) if progress else None
            res = train_run(recipe, seed, preset, out / "runs" / recipe.name / f"seed{seed}", data,
                            master=master, progress=cb, device=device, fresh=fresh, options=options)
            results.setdefault(recipe.name, []).append(res)
    rank, world = dist_info()
    summary = summarize(results, preset, seeds, world, recipes={r.name: r for r in resolved})
    summary["master_weights"] = canonical_master(master)
    from floatlab.train.options import options_from
    summary["options"] = options_from(options).to_dict()
    for name, runs in results.items():
        if any(r.loss_scale for r in runs):
            summary["recipes"][name]["skipped_steps"] = [len(r.skipped) for r in runs]
            summary["recipes"][name]["final_loss_scale"] = [r.loss_scale[-1] for r in runs if r.loss_scale]
    summary["corpus"] = {"source": data.source, "sha256": data.digest}
    from floatlab.provenance import environment
    summary["environment"] = environment()
    if rank == 0:
        from floatlab.atomic import atomic_path, write_json
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "summary.json", summary)
        with atomic_path(out / "curves.csv") as tmp:
            write_curves(results, tmp)
        with atomic_path(out / "loss.png") as tmp:
            plot(results, summary, tmp)
    return summary


def _std(v: list[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def summarize(results: dict[str, list[RunResult]], preset: Preset, seeds, world: int = 1,
              recipes: dict[str, Recipe] | None = None) -> dict:
    """The summary: per recipe the final validation loss (mean, std, per seed), its gap to bf16
    (mean and seed-paired std), step times, the recipe itself and which layers it quantized."""
    recipes = recipes or {name: get_recipe(name) for name in results}
    base = {r.seed: r.final_loss for r in results["bf16"]}
    base_mean = statistics.fmean(base.values())
    out = {}
    for name, runs in results.items():
        report = describe(recipes[name], preset)
        finals = [r.final_loss for r in runs]
        paired = [(r.final_loss - base[r.seed]) / base[r.seed] for r in runs]
        times = sorted(t for r in runs for t in r.step_time[1:] or r.step_time)
        mean = statistics.fmean(finals)
        out[name] = {
            "final_loss": mean,
            "relative_to_bf16": (mean - base_mean) / base_mean,
            "relative_to_bf16_std": _std(paired),
            "relative_to_bf16_per_seed": paired,
            "final_loss_std": _std(finals),
            "final_loss_per_seed": finals,
            "final_train_loss": statistics.fmean(statistics.fmean(r.train_loss[-20:]) for r in runs),
            "step_time_s": times[len(times) // 2] if times else None,
            "step_time_vs_bf16": None,
            "description": recipes[name].description,
            "quantized_layers": list(report.quantized),
            "kept_in_float32": report.kept,
            "recipe": recipes[name].to_dict(),
        }
    t0 = out["bf16"]["step_time_s"]
    for v in out.values():
        if t0 and v["step_time_s"]:
            v["step_time_vs_bf16"] = v["step_time_s"] / t0
    return {"preset": {k: v for k, v in asdict(preset).items() if k != "model"},
            "model": asdict(preset.model), "seeds": list(seeds), "world_size": world,
            "final_loss_is": f"validation loss after {preset.steps} steps, mean over seeds",
            "bf16_seed_spread": {"std": out["bf16"]["final_loss_std"],
                                 "relative": out["bf16"]["final_loss_std"] / base_mean},
            "recipes": out}


def write_curves(results: dict[str, list[RunResult]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["recipe", "seed", "step", "train_loss", "val_loss", "step_time_s"])
        for name, runs in results.items():
            for r in runs:
                for i, loss in enumerate(r.train_loss):
                    step = i + 1
                    val = r.val_loss.get(step, "")
                    t = r.step_time[i] if i < len(r.step_time) else ""
                    w.writerow([name, r.seed, step, f"{loss:.6f}", val if val == "" else f"{val:.6f}",
                                t if t == "" else f"{t:.4f}"])


def plot_title(summary: dict) -> str:
    """The plot's title, from the preset and model actually trained."""
    m, p = summary["model"], summary["preset"]
    layers = f"{m['n_layer']} layer{'s' if m['n_layer'] != 1 else ''}"
    return (f"GPT ({p['name']} preset: {layers}, d={m['d_model']}, context {m['block_size']}, "
            f"batch {p['batch_size']}), byte-level, {p['steps']} steps")


def plot(results: dict[str, list[RunResult]], summary: dict, path: Path) -> None:
    """Write :func:`figure` to ``path`` as a PNG."""
    import matplotlib.pyplot as plt

    fig = figure(results, summary)
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def figure(results: dict[str, list[RunResult]], summary: dict):
    """Loss curves (left) and each recipe's final loss relative to bf16 (right), one colour per
    recipe in both panels; bf16, the reference, is black and dashed, drawn above the others.
    Returns the matplotlib figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    others = [n for n in names if n != "bf16"]
    cmap = plt.get_cmap("tab10" if len(others) <= 10 else "tab20")
    colour = {n: cmap(i % cmap.N) for i, n in enumerate(others)}
    colour["bf16"] = "black"
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [1.25, 1]})
    for name in [*others, "bf16"]:
        runs = results[name]
        n = min(len(r.train_loss) for r in runs)
        mean = [statistics.fmean(r.train_loss[i] for r in runs) for i in range(n)]
        k = max(1, n // 30)
        smooth = [statistics.fmean(mean[max(0, i - k):i + 1]) for i in range(n)]
        base = name == "bf16"
        ax.plot(range(1, n + 1), smooth, label=f"{name} (baseline)" if base else name, color=colour[name],
                lw=2.0 if base else 1.2, ls="--" if base else "-", zorder=10 if base else 2)
    ax.set_xlabel("step")
    ax.set_ylabel(f"train loss (mean of {len(summary['seeds'])} seed(s), smoothed)")
    ax.set_title(plot_title(summary), fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    order = [labels.index("bf16 (baseline)")] + [i for i, lab in enumerate(labels) if lab != "bf16 (baseline)"]
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=9,
              ncol=2 if len(labels) > 6 else 1, framealpha=0.9)
    ax.grid(alpha=0.3)
    rel = [100 * summary["recipes"][n]["relative_to_bf16"] for n in others]
    err = [100 * summary["recipes"][n]["relative_to_bf16_std"] for n in others]
    bx.barh(others, rel, xerr=err, color=[colour[n] for n in others], alpha=0.85)
    bx.axvline(0, color="black", lw=1.2, ls="--", label="bf16")
    spread = 100 * summary["bf16_seed_spread"]["relative"]
    if spread > 0:
        bx.axvspan(-spread, spread, color="gray", alpha=0.2, label="bf16 seed spread (1 std)")
    bx.set_xlabel("final validation loss vs bf16 (%)\n[bars: mean over seeds; whiskers: paired std]")
    bx.set_title(f"final validation loss after {summary['preset']['steps']} steps, relative to bf16",
                 fontsize=10)
    bx.invert_yaxis()
    bx.legend(fontsize=9)
    bx.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
