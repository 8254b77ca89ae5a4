"""``floatlab lm-eval TARGET --tasks ...``: lm-evaluation-harness on a floatlab-quantized model (a
``floatlab ptq`` result) or on a model in fp32. Thin: check every input, call
floatlab.eval.lm_eval, print the task table, write results.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from floatlab.cli.output import (CliError, check_earlier_result, check_int, check_out_dir, command_line, progress, say,
                                 show_table)


def lm_eval_command(
    target: str = typer.Argument(..., help="a folder written by `floatlab ptq` (the quantized model), or a model (built-in name or HF folder, evaluated in fp32)"),
    tasks: str = typer.Option(..., "--tasks", "-t", help="comma-separated lm-eval tasks (e.g. arc_easy,hellaswag) or your own"),
    include_path: Path = typer.Option(None, "--include-path", help="a folder of your own lm-eval task YAML files"),
    limit: float = typer.Option(None, "--limit", help="documents per task (an integer), or a fraction below 1"),
    num_fewshot: int = typer.Option(None, "--num-fewshot", help="few-shot examples (default: each task's own)"),
    batch_size: int = typer.Option(8, "--batch-size", help="requests per forward pass"),
    seed: int = typer.Option(0, "--seed", help="lm-eval's random seeds"),
    model: str = typer.Option(None, "--model", "-m", help="a ptq result's source model folder, if it moved"),
    device: str = typer.Option("cpu", "--device", help="where the model runs: cpu, cuda, cuda:N"),
    out: Path = typer.Option(Path("results/lm-eval"), "--out", "-o", help="folder for results.json"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier results.json in --out (without it, an --out that holds one is refused)"),
) -> None:
    """Evaluate a quantized model (weights and activations fake-quantized as floatlab saved them) on lm-eval tasks."""
    from floatlab.cli import inputs
    from floatlab.cli.eval import check_ptq_folder
    from floatlab.eval.lm_eval import LmEvalError, check_tasks

    t0 = time.time()
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    check_int(batch_size, "--batch-size", 1)
    if limit is not None and not (0 < limit < 1 or (limit >= 1 and float(limit).is_integer())):
        raise CliError(f"must be an integer >= 1 or a fraction in (0, 1), got {limit}", "--limit")
    if num_fewshot is not None:
        check_int(num_fewshot, "--num-fewshot", 0)
    dev = inputs.device(device)
    out = check_out_dir(out)
    p = Path(target).expanduser()
    saved = None
    if p.is_dir() and (p / "config.json").is_file() and "floatlab_ptq" in json.loads((p / "config.json").read_text()):
        saved = check_ptq_folder(p, "TARGET")
        from floatlab.models.registry import ModelError
        from floatlab.ptq.io import source_model
        try:
            src = source_model(saved, model, f"{p}/config.json")
        except ModelError as err:
            raise CliError(str(err), "--model" if model is not None else "TARGET") from None
        _, _, kind, _, _ = inputs.resolve(src, flag="--model" if model is not None else f"{p}/config.json: model")
    else:
        if model is not None:
            raise CliError("--model applies to a `floatlab ptq` result; TARGET is the model itself", "--model")
        _, _, kind, _, _ = inputs.resolve(target, flag="TARGET")
    if kind != "causal_lm":
        raise CliError("lm-eval evaluates causal language models; this is an encoder", "TARGET")
    if include_path is not None and not include_path.expanduser().is_dir():
        raise CliError(f"{include_path} is not a folder of task YAML files", "--include-path")
    try:
        check_tasks(names, include_path)
    except LmEvalError as err:
        raise CliError(str(err), "--tasks") from None
    check_earlier_result(out, ("results.json",), overwrite)    # last: a mistake is named before any prompt

    from floatlab.eval.lm_eval import evaluate, task_rows

    if saved is not None:
        from floatlab.ptq.io import load_quantized
        lm, cfg, saved = load_quantized(p, log=say, model=src, device=dev)
        what = f"{cfg.label()} ({p})"
    else:
        lm = inputs.load(target, device=dev)
        what = f"{lm.name} in fp32"
    say(f"lm-eval on {what}: {', '.join(names)}")
    lim = None if limit is None else (int(limit) if limit >= 1 else limit)
    with progress():
        try:
            res = evaluate(lm.model, lm.tokenizer, names, include_path=include_path, batch_size=batch_size, limit=lim,
                           num_fewshot=num_fewshot, seed=seed)
        except LmEvalError as err:
            raise CliError(str(err), "--tasks") from None
    rows = task_rows(res)
    show_table(f"lm-eval: {what}", rows[0], rows[1:], right=("value", "stderr"))
    from floatlab.atomic import write_json
    from floatlab.provenance import environment

    record = {"target": str(p.resolve()) if saved is not None else target, "quantized": saved is not None,
              "ptq": saved["ptq"] if saved else None, "model": saved["model"] if saved else lm.name,
              "tasks": names, "limit": lim, "num_fewshot": num_fewshot, "seed": seed, "batch_size": batch_size,
              "device": str(dev), "results": res.get("results"), "n-shot": res.get("n-shot"),
              "versions": res.get("versions"), "higher_is_better": res.get("higher_is_better"),
              "lm_eval_config": {k: v for k, v in (res.get("config") or {}).items() if k != "model"},
              "command": command_line(), "environment": environment(), "seconds": time.time() - t0}
    write_json(out / "results.json", record, default=str)
    say(f"wrote {out / 'results.json'} in {time.time() - t0:.1f}s")


def register(app: typer.Typer) -> None:
    app.command("lm-eval")(lm_eval_command)
