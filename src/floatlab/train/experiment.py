"""The multi-recipe experiment: runs, then ``summary.json``, ``curves.csv`` and ``loss.png``."""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import asdict
from pathlib import Path

from floatlab.nn.recipes import get_recipe
from floatlab.train.data import Corpus
from floatlab.train.loop import RunResult, dist_info, train_run
from floatlab.train.presets import Preset


def run_experiment(recipes: list[str], seeds: list[int], preset: Preset, out: Path,
                   corpus: str = "pydoc", master: str | None = None, progress=None,
                   device: str = "cpu") -> dict:
    """Train every (recipe, seed) under ``out/runs/`` (finished runs are reused, interrupted
    ones resumed), then write the summary, the curves and the plot. bf16 is always included."""
    out = Path(out)
    names = list(dict.fromkeys(["bf16", *recipes]))
    data = Corpus.load(corpus)
    results: dict[str, list[RunResult]] = {}
    for name in names:
        recipe = get_recipe(name)
        for seed in seeds:
            cb = progress(recipe.name, seed, preset.steps) if progress else None
            res = train_run(recipe, seed, preset, out / "runs" / recipe.name / f"seed{seed}", data,
                            master=master, progress=cb, device=device)
            results.setdefault(recipe.name, []).append(res)
    rank, world = dist_info()
    summary = summarize(results, preset, seeds, world)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        write_curves(results, out / "curves.csv")
        plot(results, summary, out / "loss.png")
    return summary


def _std(v: list[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def summarize(results: dict[str, list[RunResult]], preset: Preset, seeds, world: int = 1) -> dict:
    base = {r.seed: r.final_loss for r in results["bf16"]}
    base_mean = statistics.fmean(base.values())
    out = {}
    for name, runs in results.items():
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
            "description": get_recipe(name).description,
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


def plot(results: dict[str, list[RunResult]], summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, runs in results.items():
        n = min(len(r.train_loss) for r in runs)
        mean = [statistics.fmean(r.train_loss[i] for r in runs) for i in range(n)]
        k = max(1, n // 30)
        smooth = [statistics.fmean(mean[max(0, i - k):i + 1]) for i in range(n)]
        ax.plot(range(1, n + 1), smooth, label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(f"train loss (mean of {len(summary['seeds'])} seeds, smoothed)")
    ax.set_title("small GPT, byte-level, emulated GEMM formats")
    ax.legend(fontsize=8)
    names = [n for n in summary["recipes"] if n != "bf16"]
    rel = [100 * summary["recipes"][n]["relative_to_bf16"] for n in names]
    err = [100 * summary["recipes"][n]["relative_to_bf16_std"] for n in names]
    bx.barh(names, rel, xerr=err, color="tab:blue", alpha=0.8)
    bx.axvline(0, color="k", lw=0.8)
    spread = 100 * summary["bf16_seed_spread"]["relative"]
    bx.axvspan(-spread, spread, color="gray", alpha=0.2, label="bf16 seed spread (1 std)")
    bx.set_xlabel("final validation loss vs bf16 (%)  [bars: mean; whiskers: paired std]")
    bx.invert_yaxis()
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
