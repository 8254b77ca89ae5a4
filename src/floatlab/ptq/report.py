"""Turn ``run_compare`` results into a ranked table, results.json, report.md and plots."""

from __future__ import annotations

from pathlib import Path

from floatlab.eval import report as R
from floatlab.text import plural

CONVENTIONS = (
    "Quantized: every nn.Linear inside the transformer blocks (weights; and their input activations "
    "unless weight-only). Embeddings, norms, attention's batched matmuls (QK^T, softmax*V), the pooler "
    "and the LM head stay fp32. Block formats scale their own blocks along the contraction dimension "
    "(weights: in_features; activations: last axis). bf16/fp16 are applied unscaled. Other scalar "
    "formats get an absmax scale: per output channel for weights, per token (dynamic) for "
    "activations, the absmax mapped to the format's max (HiF8: to 15, the top of its 3-mantissa-bit "
    "range). Rounding: each format's default (RNE; HiF8 and HiF4 ties-away), saturating.")


def environment_line(env: dict) -> str:
    """One line from :func:`floatlab.provenance.environment`: versions, CPU, threads, GPU."""
    v = env.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("floatlab", "torch", "transformers") if k in v)
    gpu = f", {env['cuda']}" if env.get("cuda") else ""
    return (f"{libs}; Python {env.get('python')}; {env.get('cpu')} ({env.get('cpu_count')} CPUs, "
            f"{plural(env.get('torch_threads'), 'torch thread')}){gpu}; {env.get('time_utc')}")


def _many_methods(results: dict) -> bool:
    return len(results.get("methods") or [results.get("method")]) > 1


def compare_table(results: dict) -> list[list[str]]:
    """The ranked table of a ``run_compare`` result as strings, header row first, fp32 second
    (a ``method`` column when the grid has several methods)."""
    rows = results["rows"]
    many = _many_methods(results)

    def cell(r):
        return [r.get("method", results["method"]), r["format"]] if many else [r["format"]]
    names = ["method", "format"] if many else ["format"]
    ref_names = ["-", "fp32"] if many else ["fp32"]
    if results["kind"] == "encoder":
        ranked = R.ranked(rows, "cos_mean", True)
        ref = results["fp32"].get("retrieval")
        if ref is None:                      # a user's own texts: no retrieval task
            head = ["rank", *names, "bits/value", "cos mean", "cos worst", "min SQNR dB", "s"]
            table = [head, ["-", *ref_names, "32", "1.0000", "1.0000", "inf", f"{results['fp32']['seconds']:.1f}"]]
            for i, r in enumerate(ranked, 1):
                table.append([str(i), *cell(r), f"{r['bits_per_value']:g}", f"{r['cos_mean']:.4f}",
                              f"{r['cos_min']:.4f}", f"{r['min_layer_sqnr_db']:.1f}", f"{r['seconds']:.1f}"])
            return table
        head = ["rank", *names, "bits/value", "cos mean", "cos worst", "R@1", "dR@1 [95% CI]", "R@10",
                "min SQNR dB", "s"]
        table = [head, ["-", *ref_names, "32", "1.0000", "1.0000", f"{ref['recall_at_1']:.3f}", "-",
                        f"{ref['recall_at_10']:.3f}", "inf", f"{results['fp32']['seconds']:.1f}"]]
        for i, r in enumerate(ranked, 1):
            lo, hi = r["delta_recall_at_1_ci"]
            table.append([str(i), *cell(r), f"{r['bits_per_value']:g}", f"{r['cos_mean']:.4f}",
                          f"{r['cos_min']:.4f}", f"{r['recall_at_1']:.3f}",
                          f"{r['delta_recall_at_1']:+.3f} [{lo:+.3f}, {hi:+.3f}]", f"{r['recall_at_10']:.3f}",
                          f"{r['min_layer_sqnr_db']:.1f}", f"{r['seconds']:.1f}"])
        return table
    ranked = R.ranked(rows, "perplexity", False)
    head = ["rank", *names, "bits/value", "perplexity", "change vs fp32", "min SQNR dB", "s"]
    base = results["fp32"]["perplexity"]
    table = [head, ["-", *(["-", "fp32*"] if many else ["fp32*"]), "32", f"{base:.3f}", "-", "inf",
                    f"{results['fp32']['seconds']:.1f}"]]
    for i, r in enumerate(ranked, 1):
        table.append([str(i), *cell(r), f"{r['bits_per_value']:g}", f"{r['perplexity']:.3f}",
                      f"{r['delta_perplexity']:+.3f}", f"{r['min_layer_sqnr_db']:.1f}", f"{r['seconds']:.1f}"])
    return table


def data_note(results: dict) -> str:
    """Which data the results used (path, size, SHA-256), as one sentence; ``""`` without a record."""
    data = results.get("data") or {}
    parts = []
    for role in ("evaluation", "calibration"):
        src = data.get(role)
        if not src:
            continue
        if src.get("kind") == "builtin":
            parts.append(f"{role}: the built-in text ({src['source']}, sha256 {src['sha256'][:16]}...)")
        else:
            field = f", field {src['text_field']!r}" if src.get("text_field") else ""
            parts.append(f"{role}: {src['path']} ({src['kind']}{field}, {plural(src['texts'], 'text')}, {plural(src['bytes'], 'byte')}, "
                         f"sha256 {src['sha256'][:16]}...)")
    return ("Data: " + "; ".join(parts) + ".") if parts else ""


def render_compare(results: dict, out: Path) -> tuple[list[list[str]], str]:
    """Write ``results.json`` (first), the plots and ``report.md`` (the ranked table, the
    conventions, the command and the environment, every plot linked) into ``out``; return the
    table's rows (header first) and the report's text. Every file is written atomically."""
    from floatlab.atomic import write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    R.write_json(out / "results.json", results)
    rows = results["rows"]
    if _many_methods(results):         # plots label each cell "method format"
        rows = [dict(r, format=f"{r.get('method')} {r['format']}") for r in rows]
    table = compare_table(results)
    head = table[0]
    task = results["task"]
    if results["kind"] == "encoder" and "retrieval" not in results["fp32"]:
        R.plot_metric_vs_bits(rows, "cos_mean", "1 - mean cosine to fp32 (log)", out / "cosine_vs_bits.png", True)
        plots = ["cosine_vs_bits.png"]
        metric_note = (f"Ranking metric: mean cosine similarity of sentence embeddings to fp32 over the {task['texts']} "
                       f"texts of {task['source']} (<= {task['max_length']} tokens each).")
    elif results["kind"] == "encoder":
        ref = results["fp32"]["retrieval"]
        R.plot_metric_vs_bits(rows, "cos_mean", "1 - mean cosine to fp32 (log)", out / "cosine_vs_bits.png", True)
        R.plot_metric_vs_bits(rows, "recall_at_1", "retrieval recall@1", out / "recall_vs_bits.png",
                              ci="retrieval.recall_at_1_ci", reference=ref["recall_at_1"])
        plots = ["cosine_vs_bits.png", "recall_vs_bits.png"]
        metric_note = (f"Ranking metric: mean cosine similarity of sentence embeddings to fp32 over {task['texts']} "
                       f"texts ({task['pairs']} queries + passages, <= {task['max_length']} tokens). Retrieval: "
                       f"query = first sentence of a documentation paragraph, target = the rest of it, among all "
                       f"{task['pairs']} passages; recall 95% Wilson intervals in results.json and as bars in "
                       f"recall_vs_bits.png, dR@1 is paired (bootstrap over queries). fp32 R@1 "
                       f"{ref['recall_at_1']:.3f} [{ref['recall_at_1_ci'][0]:.3f}, {ref['recall_at_1_ci'][1]:.3f}].")
    else:
        base = results["fp32"]["perplexity"]
        R.plot_metric_vs_bits(rows, "perplexity", "perplexity", out / "perplexity_vs_bits.png",
                              reference=base, reference_label="fp32*")
        plots = ["perplexity_vs_bits.png"]
        text = "Python's documentation (pydoc_data.topics)" if task.get("source", "").startswith("pydoc") \
            else task.get("source", "")
        bos = " (each after the BOS token, as the tokenizer adds it; the same targets)" if task.get("bos") else ""
        metric_note = (f"Perplexity over {task['windows']} non-overlapping windows of {task['window']} tokens of "
                       f"{text}{bos}. *fp32 baseline: {results['baseline_note']}.")
    R.plot_layer_sqnr(rows, out / "layer_sqnr.png")
    plots.append("layer_sqnr.png")
    env = results.get("environment") or {}
    n_proc = results.get("processes", 1)
    procs = "" if n_proc == 1 else f" per process, {n_proc} processes"
    md = [f"# floatlab compare: {results['model']}", "",
          *([f"Command: `{results['command']}`", ""] if results.get("command") else []),
          f"Model: `{results['model']}` ({results['model_type']}), baseline: {results['baseline_note']}. "
          f"Method: {results['method']}, {'weights only' if results['weights_only'] else 'weights and activations'}.",
          "", R.markdown_table([dict(zip(head, row)) for row in table[1:]], [(h, h) for h in head]), "",
          metric_note, "", *([data_note(results), ""] if data_note(results) else []), CONVENTIONS, "",
          f"Total time {results.get('seconds_wall', results['seconds_total']):.1f} s on {plural(results['threads'], 'thread')}"
          f"{procs}.",
          *(["", f"Environment: {environment_line(env)}."] if env else []),
          "", *(f"![{p.removesuffix('.png').replace('_', ' ')}]({p})" for p in plots), ""]
    text = "\n".join(md)
    write_text(out / "report.md", text)
    return table, text
