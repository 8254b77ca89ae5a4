"""``floatlab train``: compare recipes by training a small GPT (thin: parse, call, print)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def train_command(
    recipe: list[str] = typer.Option(None, "--recipe", "-r", help="A built-in recipe name or a .json/.yaml recipe file; repeat for several (default: every built-in). bf16 is always run as the baseline."),
    seeds: int = typer.Option(1, "--seeds", help="Number of seeds (0..N-1) per recipe."),
    steps: int = typer.Option(None, "--steps", help="Training steps (default: the preset's)."),
    preset: str = typer.Option("smoke", "--preset", help="smoke | small | paper"),
    out: Path = typer.Option(..., "--out", help="Output folder: summary.json, curves.csv, loss.png, runs/ (checkpoints)."),
    corpus: str = typer.Option("pydoc", "--corpus", help="'pydoc' (pydoc_data.topics) or 'file:PATH' to a text file."),
    master: str = typer.Option(None, "--master-weights", help="Keep master weights in this format with stochastic rounding (e.g. bf16)."),
    device: str = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads per process (1 is fastest on shared cores: OpenMP barriers stall when cores are oversubscribed)."),
) -> None:
    """Train a small GPT once per recipe and seed; report the final loss relative to bf16."""
    import torch

    from floatlab.nn.recipes import get_recipe, list_recipes
    from floatlab.train.experiment import run_experiment
    from floatlab.train.loop import dist_info, init_distributed
    from floatlab.train.presets import get_preset

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads > 0:
        torch.set_num_threads(threads)
    init_distributed()
    rank, world = dist_info()
    if device == "cuda" and world > 1:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    try:
        p = get_preset(preset).with_steps(steps)
        names = [get_recipe(r).name for r in (recipe or list_recipes())]
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    console = Console(quiet=rank != 0)
    console.print(f"[bold]floatlab train[/]: preset {p.name} ({p.steps} steps, batch {p.batch_size}, "
                  f"{p.model}), recipes {', '.join(dict.fromkeys(['bf16', *names]))}, "
                  f"{seeds} seed(s), {world} process(es)")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(),
                  console=console, disable=rank != 0) as bar:
        def progress(name, seed, total):
            task = bar.add_task(f"{name:<14} seed {seed}", total=total, loss=float("nan"))
            return lambda step, loss: bar.update(task, completed=step, loss=loss)

        summary = run_experiment(names, list(range(seeds)), p, out, corpus=corpus, master=master,
                                 progress=progress, device=device)
    table = Table(title=f"final validation loss after {p.steps} steps ({seeds} seed(s)); "
                        f"bf16 seed spread {100 * summary['bf16_seed_spread']['relative']:.2f}%")
    for col in ("recipe", "final loss", "std", "relative_to_bf16", "paired std", "step time", "vs bf16"):
        table.add_column(col, justify="left" if col == "recipe" else "right")
    for name, r in summary["recipes"].items():
        table.add_row(name, f"{r['final_loss']:.4f}", f"{r['final_loss_std']:.4f}",
                      f"{100 * r['relative_to_bf16']:+.2f}%", f"{100 * r['relative_to_bf16_std']:.2f}%",
                      f"{r['step_time_s'] * 1e3:.0f} ms", f"{r['step_time_vs_bf16']:.2f}x")
    console.print(table)
    console.print(f"wrote {out}/summary.json, {out}/curves.csv, {out}/loss.png")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)


def main() -> None:
    """Entry point of ``python -m floatlab.train`` (also under torchrun)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train_command)
    app()
