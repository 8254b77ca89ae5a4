"""EleutherAI's lm-evaluation-harness on a floatlab-quantized model.

lm-eval's ``HFLM`` takes a model instance, so a causal LM quantized by floatlab (its linear layers
are ``QuantLinear``: fake-quantized weights, and activations fake-quantized in every forward pass)
is evaluated as it is, with lm-eval's own tasks, prompts and metrics: the usual task table.

Example (it needs a ``floatlab ptq`` output folder, so it is not run as a doctest)::

    from floatlab.eval.lm_eval import evaluate
    from floatlab.ptq.io import load_quantized
    lm, cfg, saved = load_quantized("q-int4")                        # a `floatlab ptq` result
    res = evaluate(lm.model, lm.tokenizer, ["hellaswag", "arc_easy"])  # needs the Hub's data sets
    res["results"]["arc_easy"]["acc,none"]

Standard tasks download their data sets from the Hugging Face Hub (run where the network is
available, or with the data in the ``datasets`` cache). Tasks of your own are YAML files in a
folder passed as ``include_path`` (lm-eval's ``dataset_path: json`` reads local JSON-lines
data); see docs/workflow.md. The BOS token follows the tokenizer's own convention (as
floatlab's perplexity does): lm-eval's ``add_bos_token`` is set where the tokenizer adds one.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["LmEvalError", "task_manager", "check_tasks", "evaluate", "task_rows"]


class LmEvalError(ValueError):
    """An lm-eval run that cannot start (missing package, unknown task, a data set that cannot be
    read offline); the message says what to do."""


def _import():
    try:
        import lm_eval  # noqa: F401
    except ImportError as err:
        raise LmEvalError("lm-evaluation-harness is not installed: pip install 'floatlab[lmeval]'") from err
    import lm_eval
    return lm_eval


def task_manager(tasks: list[str], include_path=None):
    """An lm-eval ``TaskManager`` that knows ``tasks``: only the tasks under ``include_path``
    when they are all there (indexing lm-eval's thousands of built-in tasks takes a while),
    else lm-eval's built-in tasks too."""
    _import()
    from lm_eval.tasks import TaskManager

    paths = [str(Path(p).expanduser()) for p in ([include_path] if isinstance(include_path, (str, os.PathLike))
                                                  else (include_path or []))]
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    return TaskManager(include_path=paths or None)


def check_tasks(tasks: list[str], include_path=None):
    """The ``TaskManager`` for ``tasks`` (see :func:`task_manager`), after checking that every
    task (or group) exists: an unknown name raises :class:`LmEvalError` with a did-you-mean."""
    import difflib

    if not tasks:
        raise LmEvalError("no task given (comma-separated lm-eval task names, e.g. arc_easy,hellaswag)")
    for p in ([include_path] if isinstance(include_path, (str, os.PathLike)) else (include_path or [])):
        if not Path(p).expanduser().is_dir():
            raise LmEvalError(f"{p} is not a folder of task YAML files")
    tm = task_manager(tasks, include_path)
    known = set(tm.all_tasks)
    for t in tasks:
        if t not in known:
            close = difflib.get_close_matches(t, sorted(known), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise LmEvalError(f"unknown lm-eval task {t!r}{hint} (tasks of your own: a folder of task YAML files "
                              "passed as include_path / --include-path)")
    return tm


def evaluate(model, tokenizer, tasks: list[str], *, include_path=None, batch_size: int = 8, limit=None,
             num_fewshot: int | None = None, seed: int = 0, bootstrap_iters: int = 100000,
             log_samples: bool = False, max_length: int | None = None) -> dict:
    """Run lm-eval's ``tasks`` on ``model`` (a causal LM, e.g. quantized by floatlab) and return
    lm-eval's results dict (``results[task]["acc,none"]``, ``configs``, ``versions``, ``n-shot``,
    and ``samples`` with ``log_samples``).

    ``include_path``: folder(s) of your own task YAML files; ``limit``: documents per task (an
    int, or a fraction); ``seed``: lm-eval's random seeds. The model runs on its own device;
    ``add_bos_token`` follows the tokenizer (:func:`floatlab.eval.metrics.adds_bos`). Raises
    :class:`LmEvalError` for an unknown task or a data set that cannot be read (offline: a Hub
    data set that is not in the cache)."""
    lm_eval = _import()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval.models.huggingface import HFLM

    from floatlab.eval.metrics import adds_bos

    tm = check_tasks(list(tasks), include_path)
    p = next(model.parameters())
    kw = {"max_length": max_length} if max_length else {}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(p.device),
              add_bos_token=adds_bos(tokenizer), **kw)
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, limit=limit,
                                      num_fewshot=num_fewshot, log_samples=log_samples, random_seed=seed,
                                      numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                                      bootstrap_iters=bootstrap_iters)
    except (ConnectionError, OSError) as err:
        raise LmEvalError(f"lm-eval could not read a task's data set ({type(err).__name__}: {err}); the standard "
                          "tasks download their data from the Hugging Face Hub: run where the network is available "
                          "(or with the data sets in the datasets cache), or define a local task "
                          "(docs/workflow.md)") from None
    return out


def task_rows(results: dict) -> list[list[str]]:
    """``[task, metric, value, stderr]`` rows of lm-eval's results (header first)."""
    rows = [["task", "metric", "value", "stderr"]]
    for task, res in results.get("results", {}).items():
        for key, value in res.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            err = res.get(f"{metric}_stderr,{filt}")
            rows.append([task, metric if filt == "none" else f"{metric} ({filt})", f"{value:.6g}",
                         f"{err:.3g}" if isinstance(err, (int, float)) else "-"])
    return rows
