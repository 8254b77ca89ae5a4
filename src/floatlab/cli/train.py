"""``floatlab train``: compare recipes by training a small GPT, or an MLP/CNN on images (thin:
check, call, print); ``floatlab data``: prepare the image data sets.

Every input is checked before any model is built or any step is trained: numbers, preset,
recipes (names or files), master-weight format, device, corpus, the output folder, and every
run folder's checkpoint against the settings asked for (a run made with other settings is
refused, naming the difference, unless ``--fresh``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import typer

from floatlab.text import plural

#: TrainOptions' fields and the flags that set them (all of them options of the lm task)
_OPTION_FLAGS = {"dtype": "--dtype", "master_weights": "--no-fp32-master", "loss_scale": "--loss-scale",
                 "init_scale": "--loss-scale-init", "growth_interval": "--loss-scale-window",
                 "warmup_bf16": "--bf16-warmup"}
_RESUME = "rerun the same command to resume: finished runs are kept, the others go on from their last checkpoint"


def train_command(
    recipe: list[str] = typer.Option(None, "--recipe", "-r", help="A built-in recipe name (case-insensitive) or a .json/.yaml recipe file; repeat for several (default: every built-in). The lm task always adds bf16 as its baseline, the image tasks fp32 as their reference."),
    seeds: int = typer.Option(1, "--seeds", help="Number of seeds (0..N-1) per recipe; at least 1."),
    steps: int = typer.Option(None, "--steps", help="Training steps, at least 1 (default: the preset's)."),
    preset: str = typer.Option("smoke", "--preset", help="lm: smoke | small | paper; image tasks: smoke | small | full."),
    out: Path = typer.Option(..., "--out", help="Output folder: summary.json, curves.csv, loss.png (lm) or accuracy.png (image tasks), runs/ (checkpoints)."),
    corpus: str = typer.Option("pydoc", "--corpus", help="lm task: 'pydoc' (pydoc_data.topics) or 'file:PATH' to a text file."),
    master: str = typer.Option(None, "--master-weights", help="lm task: keep master weights in this format with stochastic rounding (e.g. bf16)."),
    device: str = typer.Option(None, "--device", help="lm task: cpu, cuda or cuda:N (default: cuda when available). The image tasks train on the CPU."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads per process; 0 keeps torch's default (1 is fastest on shared cores: OpenMP barriers stall when cores are oversubscribed)."),
    fresh: bool = typer.Option(False, "--fresh", help="Train every run from step 0, replacing the checkpoints in --out. Without it, finished runs with the same settings are reused, interrupted ones resumed, and a run made with other settings is refused."),
    task: str = typer.Option("lm", "--task", help="lm (byte-level language modelling, the GPT) | fashion-mnist | digits (scikit-learn's 8x8 digits, CI-sized)."),
    model: str = typer.Option(None, "--model", help="gpt (task lm) | cnn | mlp (image tasks; default cnn)."),
    rule: str = typer.Option("backprop", "--rule", help="Image tasks, MLP: backprop (the recipes) | sgd | sign | bsl (binary stochastic learning; see floatlab.nn.bsl)."),
    dtype: str = typer.Option("fp32", "--dtype", help="lm task: fp32 | fp16 | bf16, the dtype the whole model lives in (parameters, activations, gradients; optimizer states too with --no-fp32-master). The recipe's GEMM emulation applies on top."),
    fp32_master: bool = typer.Option(True, "--fp32-master/--no-fp32-master", help="lm task, with --dtype fp16/bf16: keep fp32 master weights and optimizer states (default), or update the fp16/bf16 parameters directly."),
    loss_scale: str = typer.Option("none", "--loss-scale", help="lm task: none | dynamic, skip the step and halve the scale on an Inf/NaN gradient, double it after --loss-scale-window clean steps."),
    loss_scale_init: float = typer.Option(2.0 ** 16, "--loss-scale-init", help="lm task: the first dynamic loss scale."),
    loss_scale_window: int = typer.Option(200, "--loss-scale-window", help="lm task: clean steps before the dynamic loss scale doubles."),
    bf16_warmup: int = typer.Option(0, "--bf16-warmup", help="lm task: run the first N steps of every recipe in bf16, then the recipe."),
    sweep: Path = typer.Option(None, "--sweep", help="A sweep file (.yaml/.json): a grid over element format, scale format, block size, SR/RHT roles, tensor scaling and seeds; see docs/training.md. Writes sweep.csv, sweep.md and sweep.png into --out; resumable."),
) -> None:
    """Train once per recipe and seed, and compare the recipes: a small GPT on bytes (--task lm,
    final validation loss relative to bf16) or an MLP/CNN on images (--task fashion-mnist|digits,
    test accuracy relative to fp32).

    Rerunning the same command resumes: finished runs are reused and interrupted ones continue
    from their last checkpoint with identical losses. A larger --steps extends a finished run
    only when that gives exactly the longer run (all of its steps were warm-up steps);
    otherwise it is refused like any other change of settings.
    """
    import torch

    from floatlab.cli.output import (CliError, check_int, check_out_dir, compile_note, flag_errors, on_interrupt,
                                     parse_choice, progress, say, show_table)
    from floatlab.nn.recipes import LM_RECIPES
    from floatlab.train.checkpoint import ConfigMismatch
    from floatlab.train.data import Corpus
    from floatlab.train.experiment import plan_runs, resolve_recipes, run_experiment
    from floatlab.train.loop import (canonical_master, describe, dist_info, init_distributed,
                                     resolve_device)
    from floatlab.train.presets import get_preset

    # every input first: nothing is built or trained before they all pass
    task_name = parse_choice(task, ("lm", "fashion-mnist", "digits"), "--task")
    from floatlab.train.options import TrainOptions
    try:
        options = TrainOptions(dtype=dtype, master_weights=fp32_master, loss_scale=loss_scale,
                               init_scale=loss_scale_init, growth_interval=loss_scale_window,
                               warmup_bf16=bf16_warmup)
    except ValueError as err:
        raise CliError(str(err), _OPTION_FLAGS.get(str(err).split()[0], "--dtype")) from None
    if sweep is not None:
        if recipe or task_name != "lm" or seeds != 1 or steps is not None or preset != "smoke" or master:
            raise CliError("--sweep takes the recipes, seeds, steps and preset from the sweep file; leave "
                           "--recipe, --seeds, --steps, --preset, --master-weights and --task out", "--sweep")
        return _sweep_command(sweep, out, threads, fresh, options, device, corpus)
    if task_name != "lm":
        lm_only = [_OPTION_FLAGS[k] for k in options.to_dict()]
        lm_only += [flag for flag, given in (("--master-weights", master), ("--corpus", corpus != "pydoc"),
                                             ("--device", device not in (None, "cpu"))) if given]
        if lm_only:
            what = ("an option" if len(lm_only) == 1 else f"{' and '.join(lm_only)} are options")
            raise CliError(f"{what} of the lm task (the image tasks train on the CPU, on the task's own data); "
                           f"leave {'it' if len(lm_only) == 1 else 'them'} out", lm_only[0])
        return _image_command(recipe, seeds, steps, preset, out, task_name, model, rule, threads, fresh)
    if model is not None and model.strip().lower() != "gpt":
        raise CliError(f"the lm task trains the GPT; --model {model!r} is for the image tasks "
                       "(--task fashion-mnist or digits)", "--model")
    if rule != "backprop":
        raise CliError("--rule is for the image tasks' MLP (--task fashion-mnist --model mlp)", "--rule")
    check_int(seeds, "--seeds", 1)
    if steps is not None:
        check_int(steps, "--steps", 1)
    check_int(threads, "--threads", 0, hint="0 keeps torch's default")
    with flag_errors("--preset"):
        p = get_preset(preset).with_steps(steps)
    with flag_errors("--recipe", OSError):
        recipes = resolve_recipes(recipe or list(LM_RECIPES))
    with flag_errors("--master-weights"):
        master = canonical_master(master)
    with flag_errors("--device"):
        dev = resolve_device(device)
    with flag_errors("--corpus"):
        _check_corpus_not_empty(corpus)
        data = Corpus.load(corpus)
        data.check(p.model.block_size)
    init_distributed()
    rank, world = dist_info()
    if p.batch_size % world:
        raise CliError(f"the global batch of the {p.name} preset ({p.batch_size} sequences) is not divisible "
                       f"by {world} processes", "--nproc_per_node")
    out = check_out_dir(out)
    _check_same_comparison(out, "lm", "gpt")
    if master and options.dtype != "fp32":
        raise CliError(f"--master-weights {master} rounds float32 master weights to a format; with --dtype "
                       f"{options.dtype} the master weights are fp32 (--fp32-master, the default)", "--master-weights")
    try:
        plan = plan_runs(recipes, list(range(seeds)), p, out, data, master, fresh, options)
    except ConfigMismatch as err:
        raise CliError(f"{err}. Pass --fresh to discard the runs in {out} and train from step 0, "
                       "or choose another --out", "--out") from None

    if threads > 0:
        torch.set_num_threads(threads)
    if dev.type == "cuda" and world > 1:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    talk = say if rank == 0 else (lambda *a, **k: None)
    m = p.model
    talk(f"floatlab train: {p.name} preset (GPT {m.n_layer} layer(s), d={m.d_model}, context {m.block_size}; "
         f"{plural(p.steps, 'step')}, batch {p.batch_size}), {plural(seeds, 'seed')}, "
         f"{plural(world, 'process', 'processes')} on {dev}, "
         f"corpus {data.source}" + (f", master weights {master} (SR)" if master else "")
         + (f"; {options.describe()}" if options.to_dict() else ""))
    for r in recipes:
        talk(f"  {r.name}: {_quantized(describe(r, p))}")
    counts: dict[str, int] = {}
    for what in plan.values():
        kind = what.split()[0]
        counts[kind] = counts.get(kind, 0) + 1
    talk("runs: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if any(r.name != "bf16" for r in recipes):
        compile_note()

    on_interrupt(_RESUME)
    with progress() if rank == 0 else contextlib.nullcontext():
        summary = run_experiment(recipes, list(range(seeds)), p, out, corpus=data, master=master,
                                 device=str(dev) if world == 1 else dev.type, fresh=fresh, options=options)
    if rank != 0:
        return
    spread = 100 * summary["bf16_seed_spread"]["relative"]
    columns = ("recipe", "final loss", "std", "vs bf16", "paired std", "ms/step", "time vs bf16")
    rows = []
    for name, r in summary["recipes"].items():
        rows.append((name, f"{r['final_loss']:.4f}", f"{r['final_loss_std']:.4f}",
                     f"{100 * r['relative_to_bf16']:+.2f}%", f"{100 * r['relative_to_bf16_std']:.2f}%",
                     f"{r['step_time_s'] * 1e3:.0f}", f"{r['step_time_vs_bf16']:.2f}x"))
    show_table(f"final validation loss after {plural(p.steps, 'step')} ({p.name} preset, {plural(seeds, 'seed')}); "
               f"bf16 seed spread {spread:.2f}%", columns, rows, right=columns[1:])
    say(f"wrote {out}/summary.json, {out}/curves.csv, {out}/loss.png")


def _image_command(recipe, seeds, steps, preset, out, task, model, rule, threads, fresh) -> None:
    """``floatlab train --task fashion-mnist|digits``: every input checked, then the runs."""
    import torch

    from floatlab.cli.output import (CliError, check_int, check_out_dir, flag_errors, on_interrupt, parse_choice,
                                     progress, say, show_table)
    from floatlab.nn.recipes import IMAGE_RECIPES
    from floatlab.train.checkpoint import ConfigMismatch
    from floatlab.train.image_experiment import plan_runs, resolve, run_image_experiment
    from floatlab.train.image_run import RULES, get_image_preset, load_data
    from floatlab.train.images import ENV_VAR, DataMissing

    check_int(seeds, "--seeds", 1)
    if steps is not None:
        check_int(steps, "--steps", 1)
    check_int(threads, "--threads", 0, hint="0 keeps torch's default")
    kind = parse_choice(model or "cnn", ("cnn", "mlp"), "--model")
    how = parse_choice(rule, RULES, "--rule")
    if how != "backprop" and kind != "mlp":
        raise CliError(f"--rule {how} trains the sigmoid MLP on which binary stochastic learning compares its "
                       "rules (sgd: float32 SGD, sign: the Manhattan rule, bsl): add --model mlp", "--rule")
    if how != "backprop" and recipe:
        raise CliError(f"--rule {how} trains the float32 sigmoid MLP of the rules' comparison (float32 SGD as the "
                       "reference), without a recipe; leave --recipe out", "--recipe")
    with flag_errors("--preset"):
        p = get_image_preset(preset).with_steps(steps)
    with flag_errors("--recipe", OSError):
        runs = resolve(recipe or list(IMAGE_RECIPES), how)
    own = task == "fashion-mnist" and bool(os.environ.get(ENV_VAR))
    try:
        data = load_data(task, p)
    except DataMissing as err:      # with the variable set, the message starts with it
        raise CliError(str(err), None if own else "--task") from None
    except ValueError as err:       # a damaged file: in the user's own folder, that variable's problem
        raise CliError(str(err), ENV_VAR if own else "--task") from None
    out = check_out_dir(out)
    _check_same_comparison(out, task, kind)
    try:
        plan = plan_runs(runs, list(range(seeds)), p, kind, out, data, fresh)
    except ConfigMismatch as err:
        raise CliError(f"{err}. Pass --fresh to discard the runs in {out} and train from step 0, "
                       "or choose another --out", "--out") from None
    except ValueError as err:  # a recipe that cannot apply to this model (a layer it names, padding)
        raise CliError(str(err), "--recipe") from None
    if threads > 0:
        torch.set_num_threads(threads)
    counts: dict[str, int] = {}
    for what in plan.values():
        counts[what.split()[0]] = counts.get(what.split()[0], 0) + 1
    say(f"floatlab train: {kind} on {task} ({p.name} preset: {len(data.train_y)} training images, batch "
        f"{p.batch_size}, {plural(p.steps, 'step')}), rule {how}, {plural(seeds, 'seed')}; runs: "
        + ", ".join(f"{n} {k}" for k, n in counts.items()))
    on_interrupt(_RESUME)
    with progress():
        summary = run_image_experiment([r for r, _ in runs] if how == "backprop" else [], list(range(seeds)), p, kind, out,
                                       data, rule=how, fresh=fresh)
    columns = ("run", "test accuracy", "std", f"vs {summary['reference']} (points)", "ms/step", "time vs ref")
    rows = [(name, f"{100 * r['test_accuracy']:.2f}%", f"{100 * r['test_accuracy_std']:.2f}",
             f"{r['vs_reference_points']:+.2f}", f"{1e3 * r['step_time_s']:.0f}", f"{r['step_time_vs_reference']:.2f}x")
            for name, r in summary["recipes"].items()]
    show_table(f"{task} test accuracy after {plural(p.steps, 'step')} ({kind}, {p.name} preset, {plural(seeds, 'seed')})",
               columns, rows, right=columns[1:])
    say(f"wrote {out}/summary.json, {out}/curves.csv, {out}/accuracy.png")


def _check_same_comparison(out: Path, task: str, model: str) -> None:
    """Refuse an ``--out`` whose summary.json compares another task or model: this command would
    replace that comparison's summary (and leave its plot beside the new one)."""
    import json

    from floatlab.cli.output import CliError

    try:
        there = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return
    if not isinstance(there, dict):
        return
    was = (there.get("task", "lm"), there["model"] if isinstance(there.get("model"), str) else "gpt")
    if was != (task, model):
        raise CliError(f"{out} holds a comparison of the {was[1]} on the {was[0]} task (summary.json); this "
                       f"command trains the {model} on the {task} task and would replace it. Choose another --out",
                       "--out")


def _check_corpus_not_empty(corpus: str) -> None:
    """An empty 'file:PATH' corpus said "both buffer length (0) and count (-1) must not be 0"
    (torch.frombuffer's message); name the file instead."""
    if isinstance(corpus, str) and corpus.startswith("file:"):
        path = Path(corpus[5:]).expanduser()
        if path.is_file() and path.stat().st_size == 0:
            raise ValueError(f"corpus file {str(path)!r} is empty; give a text file to train on")


def _sweep_command(path: Path, out: Path, threads: int, fresh: bool, options, device, corpus) -> None:
    """``floatlab train --sweep FILE``: the file checked, every run folder checked, then the grid."""
    import torch

    from floatlab.cli.output import CliError, check_int, check_out_dir, flag_errors, on_interrupt, progress, say
    from floatlab.train.checkpoint import ConfigMismatch
    from floatlab.train.data import Corpus
    from floatlab.train.experiment import plan_runs
    from floatlab.train.loop import resolve_device
    from floatlab.train.options import options_from
    from floatlab.train.presets import get_preset
    from floatlab.train.sweep import SweepError, load_sweep, run_sweep

    check_int(threads, "--threads", 0, hint="0 keeps torch's default")
    with flag_errors("--sweep", SweepError, OSError):
        sw = load_sweep(path)
    if options.to_dict():
        if sw.options:
            raise CliError("the sweep file sets options; give --dtype/--loss-scale/--bf16-warmup there or "
                           "on the command line, not both", "--sweep")
        sw.options = options.to_dict()
    with flag_errors("--device"):
        dev = resolve_device(device)
    with flag_errors("--corpus"):
        _check_corpus_not_empty(corpus)
        data = Corpus.load(corpus)
    with flag_errors("--sweep"):
        p = get_preset(sw.preset).with_steps(sw.steps)
        data.check(p.model.block_size)
    out = check_out_dir(out)
    cells = sw.cells()
    from floatlab.nn.recipes import get_recipe
    recipes = [get_recipe("bf16"), *(c.recipe for c in cells), *(get_recipe(r) for r in sw.recipes)]
    try:
        plan = plan_runs(list({r.name: r for r in recipes}.values()), sw.seeds, p, out, data, None, fresh,
                         options_from(sw.options))
    except ConfigMismatch as err:
        raise CliError(f"{err}. Pass --fresh to discard the runs in {out} and train from step 0, "
                       "or choose another --out", "--out") from None
    if threads > 0:
        torch.set_num_threads(threads)
    counts: dict[str, int] = {}
    for what in plan.values():
        counts[what.split()[0]] = counts.get(what.split()[0], 0) + 1
    say(f"floatlab train --sweep {path}: {len(cells)} cells + {len(sw.recipes)} recipe(s) + bf16, seeds "
        f"{sw.seeds}, {p.name} preset ({plural(p.steps, 'step')}) on {dev}; runs: "
        + ", ".join(f"{n} {k}" for k, n in counts.items()))
    on_interrupt(_RESUME)
    with progress():
        doc = run_sweep(sw, out, data, device=str(dev), fresh=fresh)
    say((out / "sweep.md").read_text(encoding="utf-8"))
    say(f"wrote {out}/sweep.json, {out}/sweep.csv, {out}/sweep.md, {out}/sweep.png ({len(doc['rows'])} rows)")


def data_command(
    prepare: list[str] = typer.Option([], "--prepare", "-p", help="Prepare this data set: fashion-mnist (apt-get download + dpkg-deb -x into the floatlab cache where Debian's dataset-fashion-mnist package is not installed)."),
) -> None:
    """List the image data sets and where they are; prepare Fashion-MNIST offline.

    FLOATLAB_FASHION_MNIST=FOLDER reads your own copy of the four idx files instead (only that
    folder, gzipped or not); a folder that lacks one is an error (exit code 2).
    """
    from floatlab.cli.output import CliError, flag_errors, parse_choice, say, show_table
    from floatlab.train.images import ENV_VAR, DataMissing, check_fashion_mnist, prepare_fashion_mnist

    names = [parse_choice(n, ("fashion-mnist",), "--prepare") for n in prepare]
    for _ in names:
        with flag_errors("--prepare", DataMissing):
            prepare_fashion_mnist(log=say)
    try:
        where = str(check_fashion_mnist())
    except (DataMissing, ValueError) as err:   # missing, or a damaged file (named): never listed as usable
        if os.environ.get(ENV_VAR) or not isinstance(err, DataMissing):
            raise CliError(str(err)) from None
        where = "missing: floatlab data --prepare fashion-mnist"
    try:
        import sklearn  # noqa: F401
        digits = "in scikit-learn"
    except ModuleNotFoundError:
        digits = "missing: pip install scikit-learn"
    show_table("image data sets", ("name", "images", "where"),
               [("fashion-mnist", "60,000 + 10,000 28x28", where), ("digits", "1,797 8x8", digits)])


def _quantized(report) -> str:
    kept = ", ".join(f"{n} ({why})" for n, why in report.kept.items())
    return (f"{len(report.quantized)} of {len(report.quantized) + len(report.kept)} linear layers quantized"
            + (f"; float32: {kept}" if kept else ""))


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("data")(data_command)


def main() -> None:
    """Entry point of ``python -m floatlab.train`` (also under torchrun): the same command, the
    same checks, and a user mistake as one ``error:`` line (exit code 2)."""
    from floatlab.cli.output import run_guarded

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train_command)
    command = typer.main.get_command(app)
    sys.exit(run_guarded(lambda: command.main(prog_name="python -m floatlab.train", standalone_mode=False)))
