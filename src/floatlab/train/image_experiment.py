"""The image experiment: runs per (recipe or rule, seed), then ``summary.json``, ``curves.csv`` and
``accuracy.png`` (test accuracy relative to the float32 reference)."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from floatlab.nn.recipe import Recipe
from floatlab.nn.recipes import get_recipe
from floatlab.train.checkpoint import FILENAME, load_checkpoint
from floatlab.train.image_run import (ImagePreset, ImageRunResult, check_recipe, check_resumable,
                                      run_config, train_image_run)
from floatlab.train.images import ImageData, baselines


Run = tuple[Recipe, str]          # (recipe, training rule)


def resolve(recipes, rule: str) -> list[Run]:
    """The runs, reference first. ``backprop``: ``fp32`` (the reference), then ``recipes``. The
    other rules train binary stochastic learning's sigmoid MLP with the fp32 recipe, named by the
    rule: ``sgd`` (float32 SGD, the reference) first, then ``sign`` or ``bsl`` when asked for (the
    paper's comparison: its rule against full-precision SGD on the same network).

    Raises:
        ValueError: two different recipes with one name; an unknown recipe (from
            :func:`~floatlab.nn.recipes.get_recipe`).
    """
    if rule != "backprop":
        fp32 = get_recipe("fp32")
        return [(fp32, r) for r in dict.fromkeys(("sgd", rule))]
    out: dict[str, Recipe] = {}
    for r in ["fp32", *recipes]:
        recipe = get_recipe(r)
        if recipe.name in out and out[recipe.name] != recipe:
            raise ValueError(f"two different recipes are named {recipe.name!r}; runs are stored by name")
        out[recipe.name] = recipe
    return [(recipe, "backprop") for recipe in out.values()]


def run_name(recipe: Recipe, rule: str) -> str:
    return recipe.name if rule == "backprop" else rule


def plan_runs(runs: list[Run], seeds, preset: ImagePreset, model: str, out: Path,
              data: ImageData, fresh: bool = False) -> dict:
    """Check every run folder before training (see :func:`floatlab.train.experiment.plan_runs`):
    ``"new"``, ``"reused"`` or ``"resumed at step k"``; raises ``ConfigMismatch`` or ``ValueError``
    (a recipe naming layers the model does not have)."""
    cfg = preset.model_config(model, data)
    plan = {}
    for recipe, rule in runs:
        check_recipe(recipe, cfg)
        for seed in seeds:
            name = run_name(recipe, rule)
            run_dir = Path(out) / "runs" / model / name / f"seed{seed}"
            ckpt = None if fresh else load_checkpoint(run_dir / FILENAME, mmap=True)
            if ckpt is None:
                plan[name, seed] = "new"
                continue
            step = check_resumable(ckpt, run_config(recipe, seed, preset, model, rule, data), run_dir)
            plan[name, seed] = "reused" if step == preset.steps else f"resumed at step {step}"
    return plan


def run_image_experiment(recipes, seeds, preset: ImagePreset, model: str, out: Path, data: ImageData,
                         rule: str = "backprop", fresh: bool = False, write: bool = True) -> dict:
    """Train every run of :func:`resolve` and seed under ``out/runs/<model>/<name>/seed<k>/`` and
    write the summary (``out/summary.json``, with the environment), ``out/curves.csv`` and
    ``out/accuracy.png``. Returns the summary."""
    out = Path(out)
    runs = resolve(recipes, rule)
    plan_runs(runs, seeds, preset, model, out, data, fresh)
    results: dict[str, list[ImageRunResult]] = {}
    for recipe, how in runs:
        name = run_name(recipe, how)
        for seed in seeds:
            res = train_image_run(recipe, seed, preset, model, out / "runs" / model / name / f"seed{seed}",
                                  data, rule=how, fresh=fresh)
            res.recipe = name
            results.setdefault(name, []).append(res)
    summary = summarize(results, preset, model, rule, seeds, {run_name(r, how): r for r, how in runs}, data)
    if write:
        write_outputs(out, summary, results)
    return summary


def _std(v):
    return statistics.stdev(v) if len(v) > 1 else 0.0


def summarize(results: dict[str, list[ImageRunResult]], preset: ImagePreset, model: str, rule: str, seeds,
              recipes: dict[str, Recipe], data: ImageData) -> dict:
    from dataclasses import asdict

    from floatlab.provenance import environment
    base_name = next(iter(results))
    base = {r.seed: r.final_accuracy for r in results[base_name]}
    out = {}
    for name, runs in results.items():
        accs = [r.final_accuracy for r in runs]
        paired = [r.final_accuracy - base[r.seed] for r in runs]
        times = sorted(t for r in runs for t in r.step_time[1:] or r.step_time)
        out[name] = {
            "test_accuracy": statistics.fmean(accs),
            "test_accuracy_std": _std(accs),
            "test_accuracy_per_seed": accs,
            "vs_reference_points": 100 * statistics.fmean(paired),
            "vs_reference_points_std": 100 * _std(paired),
            "test_loss": statistics.fmean(r.test_loss[max(r.test_loss)] for r in runs),
            "final_train_loss": statistics.fmean(statistics.fmean(r.train_loss[-20:]) for r in runs),
            "step_time_s": times[len(times) // 2] if times else None,
            "recipe": recipes[name].to_dict(),
            "description": recipes[name].description,
        }
    t0 = out[base_name]["step_time_s"]
    for v in out.values():
        v["step_time_vs_reference"] = v["step_time_s"] / t0 if t0 and v["step_time_s"] else None
    task = data.source.split(":")[0]
    return {"task": task, "model": model, "rule": rule, "reference": base_name,
            "preset": asdict(preset), "seeds": list(seeds),
            "test_accuracy_is": f"accuracy on the {len(data.test_y)} test images after {preset.steps} steps, "
                                "mean over seeds (std: sample standard deviation over seeds)",
            "data": {"source": data.source, "sha256": data.digest, "train_images": len(data.train_y)},
            "debian_package_baselines": baselines() if task == "fashion-mnist" else [],
            "recipes": out, "environment": environment()}


def write_outputs(out: Path, summary: dict, results: dict[str, list[ImageRunResult]]) -> None:
    from floatlab.atomic import atomic_path, write_json
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    with atomic_path(out / "curves.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["recipe", "seed", "step", "train_loss", "test_accuracy", "step_time_s"])
        for name, runs in results.items():
            for r in runs:
                for i, loss in enumerate(r.train_loss):
                    acc = r.test_accuracy.get(i + 1, "")
                    w.writerow([name, r.seed, i + 1, f"{loss:.6f}", acc if acc == "" else f"{acc:.4f}",
                                f"{r.step_time[i]:.4f}" if i < len(r.step_time) else ""])
    with atomic_path(out / "accuracy.png") as tmp:
        plot(summary, results, tmp)


def plot(summary: dict, results, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    for i, name in enumerate(names):
        runs = results[name]
        n = min(len(r.train_loss) for r in runs)
        mean = [statistics.fmean(r.train_loss[j] for r in runs) for j in range(n)]
        k = max(1, n // 30)
        smooth = [statistics.fmean(mean[max(0, j - k):j + 1]) for j in range(n)]
        ref = i == 0
        ax.plot(range(1, n + 1), smooth, label=name, color="black" if ref else cmap(i % cmap.N),
                ls="--" if ref else "-", lw=2 if ref else 1.2, zorder=10 if ref else 2)
    p = summary["preset"]
    ax.set_title(f"{summary['model'].upper()} on {summary['task']} ({p['name']} preset: "
                 f"{summary['data']['train_images']} training images, batch {p['batch_size']}, {p['steps']} steps)",
                 fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel(f"train loss (mean of {len(summary['seeds'])} seed(s), smoothed)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    accs = [100 * summary["recipes"][n]["test_accuracy"] for n in names]
    err = [100 * summary["recipes"][n]["test_accuracy_std"] for n in names]
    bx.barh(names, accs, xerr=err, color=["black"] + [cmap(i % cmap.N) for i in range(1, len(names))], alpha=0.85)
    bx.set_xlim(max(0, min(accs) - 10), 100)
    bx.invert_yaxis()
    bx.set_xlabel("test accuracy (%), mean over seeds; whiskers: std")
    bx.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
