"""Turn ``run_compare`` results into a ranked table, results.json, report.md and plots."""

from __future__ import annotations

from pathlib import Path

from floatlab.eval import report as R

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
            f"{env.get('torch_threads')} torch threads){gpu}; {env.get('time_utc')}")


def compare_table(results: dict) -> list[list[str]]:
    """The ranked table of a ``run_compare`` result as strings, header row first, fp32 second."""
    rows = results["rows"]
    if results["kind"] == "encoder":
        ranked = R.ranked(rows, "cos_mean", True)
        ref = results["fp32"]["retrieval"]
        head = ["rank", "format", "bits/value", "cos mean", "cos worst", "R@1", "dR@1 [95% CI]", "R@10",
                "min SQNR dB", "s"]
        table = [head, ["-", "fp32", "32", "1.0000", "1.0000", f"{ref['recall_at_1']:.3f}", "-",
                        f"{ref['recall_at_10']:.3f}", "inf", f"{results['fp32']['seconds']:.1f}"]]
        for i, r in enumerate(ranked, 1):
            lo, hi = r["delta_recall_at_1_ci"]
            table.append([str(i), r["format"], f"{r['bits_per_value']:g}", f"{r['cos_mean']:.4f}",
                          f"{r['cos_min']:.4f}", f"{r['recall_at_1']:.3f}",
                          f"{r['delta_recall_at_1']:+.3f} [{lo:+.3f}, {hi:+.3f}]", f"{r['recall_at_10']:.3f}",
                          f"{r['min_layer_sqnr_db']:.1f}", f"{r['seconds']:.1f}"])
        return table
    ranked = R.ranked(rows, "perplexity", False)
    head = ["rank", "format", "bits/value", "perplexity", "change vs fp32", "min SQNR dB", "s"]
    base = results["fp32"]["perplexity"]
    table = [head, ["-", "fp32*", "32", f"{base:.3f}", "-", "inf", f"{results['fp32']['seconds']:.1f}"]]
    for i, r in enumerate(ranked, 1):
        table.append([str(i), r["format"], f"{r['bits_per_value']:g}", f"{r['perplexity']:.3f}",
                      f"{r['delta_perplexity']:+.3f}", f"{r['min_layer_sqnr_db']:.1f}", f"{r['seconds']:.1f}"])
    return table


def render_compare(results: dict, out: Path) -> tuple[list[list[str]], str]:
    """Write ``results.json`` (first), the plots and ``report.md`` (the ranked table, the
    conventions, the command and the environment, every plot linked) into ``out``; return the
    table's rows (header first) and the report's text. Every file is written atomically."""
    from floatlab.atomic import write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    R.write_json(out / "results.json", results)
    rows = results["rows"]
    table = compare_table(results)
    head = table[0]
    task = results["task"]
    if results["kind"] == "encoder":
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
        metric_note = (f"Perplexity over {task['windows']} non-overlapping windows of {task['window']} tokens of "
                       f"Python's documentation (pydoc_data.topics). *fp32 baseline: {results['baseline_note']}.")
    R.plot_layer_sqnr(rows, out / "layer_sqnr.png")
    plots.append("layer_sqnr.png")
    env = results.get("environment") or {}
    md = [f"# floatlab compare: {results['model']}", "",
          *([f"Command: `{results['command']}`", ""] if results.get("command") else []),
          f"Model: `{results['model']}` ({results['model_type']}), baseline: {results['baseline_note']}. "
          f"Method: {results['method']}, {'weights only' if results['weights_only'] else 'weights and activations'}.",
          "", R.markdown_table([dict(zip(head, row)) for row in table[1:]], [(h, h) for h in head]), "",
          metric_note, "", CONVENTIONS, "",
          f"Total time {results.get('seconds_wall', results['seconds_total']):.1f} s on {results['threads']} threads.",
          *(["", f"Environment: {environment_line(env)}."] if env else []),
          "", *(f"![{p.removesuffix('.png').replace('_', ' ')}]({p})" for p in plots), ""]
    text = "\n".join(md)
    write_text(out / "report.md", text)
    return table, text
