"""The per-layer format advisor: sensitivities -> a budgeted assignment -> a recipe -> the real metric.

:func:`run_advise` measures (or estimates) every layer's sensitivity to every candidate format
(:mod:`floatlab.advise.sensitivity`), builds the cost table of the chosen budget, solves it
(:mod:`floatlab.advise.search`), writes the assignment as a :class:`~floatlab.ptq.config.PTQConfig`
whose per-layer ``overrides`` ``floatlab ptq`` takes as ``--override`` rules, and **verifies it
end to end**: the model is quantized with the recipe (RTN, weight-only) and measured, because the
sum of per-layer sensitivities is only an assumption. With several budgets it also measures every
uniform format and random assignments of the same budgets (the controls of the Pareto plot).

Budgets (``kind``), each counted exactly over the quantizable layers:

* ``bits``: average bits per weight, every stored bit counted (``codec.bits``: codes, scales,
  zero points; mxfp4 4.25, nvfp4/hif4 4.5, int4 with its per-row scale 4 + 32/in);
* ``bytes``: the quantized layers' total bytes (``bits / 8``);
* ``energy``: average relative MAC energy per weight from :mod:`floatlab.hw` (int8 MAC = 1), the
  weight's format taken as both operands' (formats by name; ``int{b}_asym*`` as ``int{b}``,
  cluster codecs as ``int{widest}``, ``binary*``/``ternary*`` as XNOR/popcount and ternary).

Tied layers (``tie=True``): layers that read one input (q/k/v projections, gate/up) take one
format together, so their input is quantized once.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from floatlab import progress as _progress
from floatlab.advise.search import SOLVERS, BudgetError, Problem, Solution, random_assignments
from floatlab.ptq.config import PTQConfig
from floatlab.ptq.quantizer import QuantSpec

KINDS = ("bits", "bytes", "energy")
#: layers that read the same input, by the last part of their name
TIE_SETS = ({"q_proj", "k_proj", "v_proj"}, {"query", "key", "value"}, {"gate_proj", "up_proj"}, {"w1", "w3"})


@dataclass
class AdviseOptions:
    """What :func:`run_advise` does.

    Args:
        formats: candidate weight formats (floatlab formats or codec names).
        budgets: one budget, or several (a Pareto sweep), in the unit of ``kind``.
        kind: ``"bits"`` (average bits per weight), ``"bytes"`` or ``"energy"`` (see the module).
        solvers: solvers to run (``milp``, ``greedy``, ``genetic``); the first one's assignment
            is the recipe.
        sensitivity: ``"measured"``, ``"fisher"`` (diagonal Fisher), ``"fisher-trace"``
            (HAWQ-v3's trace form) or ``"auto"`` (measured for encoders, Fisher for causal LMs).
        tie: tie q/k/v and gate/up to one format.
        random: random assignments per budget measured as controls (0: none).
        uniform: measure every candidate format alone as a control.
        verify: quantize with the chosen recipe and measure it.
        calib: calibration windows of the Fisher proxy.
        seed: random controls and the genetic search.
        check: with a proxy sensitivity, also measure this many layers (spread over the model)
            and report the proxy's rank correlation with the measured values (0: no check).
    """

    formats: tuple[str, ...]
    budgets: tuple[float, ...]
    kind: str = "bits"
    solvers: tuple[str, ...] = ("milp",)
    sensitivity: str = "auto"
    tie: bool = True
    random: int = 0
    uniform: bool = True
    verify: bool = True
    calib: int = 8
    seed: int = 0
    check: int = 0

    def __post_init__(self) -> None:
        self.formats = tuple(self.formats)
        self.budgets = tuple(float(b) for b in self.budgets)
        self.solvers = tuple(self.solvers)
        check_formats(self.formats)
        if self.kind not in KINDS:
            raise ValueError(f"budget kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.budgets or not all(math.isfinite(b) and b > 0 for b in self.budgets):
            raise ValueError(f"budgets must be positive numbers, got {self.budgets!r}")
        bad = [s for s in self.solvers if s not in SOLVERS]
        if bad or not self.solvers:
            raise ValueError(f"unknown solver {bad[0] if bad else '(none)'!r}; solvers: {', '.join(SOLVERS)}")
        if self.sensitivity not in ("auto", "measured", "fisher", "fisher-trace"):
            raise ValueError(f"sensitivity must be auto, measured, fisher or fisher-trace, got {self.sensitivity!r}")
        if self.check < 0:
            raise ValueError(f"check must be 0 or a number of layers, got {self.check!r}")
        if self.kind == "energy":
            for f in self.formats:
                hw_name(f)


def check_formats(formats) -> None:
    """Raise ``ValueError`` naming an unknown or repeated candidate format (at least 2 needed)."""
    if len(formats) < 2:
        raise ValueError(f"give at least two candidate formats to choose among, got {list(formats)}")
    seen = set()
    for f in formats:
        try:
            QuantSpec(f)
        except ValueError as err:
            raise ValueError(f"candidate format {f!r}: {err}") from None
        if f.lower() in seen:
            raise ValueError(f"candidate format {f!r} is given twice")
        seen.add(f.lower())


def hw_name(fmt: str) -> str:
    """The :mod:`floatlab.hw` name whose MAC stands for a weight format (see the module docstring).
    Raises ``ValueError`` for a codec the cost model has no datapath for."""
    spec = QuantSpec(fmt)
    if not spec.is_codec:
        return spec.format
    c = spec.codec
    kind = type(c).__name__
    if kind == "AffineInt":
        return f"int{c.nbits}"
    if kind == "ClusterCodec":
        return f"int{c.wmax}"
    if kind == "Binary":
        return "binary"
    if kind == "Ternary":
        return "ternary"
    raise ValueError(f"the cost model has no MAC datapath for {fmt!r} ({kind}); use a bits or bytes budget")


# ---- the cost table ---------------------------------------------------------------------------
def layer_costs(layers: dict, formats, kind: str) -> tuple[list[list[float]], float, str]:
    """``(cost[layer][format], scale, unit)``: the exact cost of each layer in each format, and the
    divisor that turns a total into the budget's unit (weights for averages, 1 for bytes)."""
    n_total = sum(l.weight.numel() for l in layers.values())
    specs = [QuantSpec(f) for f in formats]
    table = []
    if kind == "energy":
        from floatlab.hw import mac_cost
        e = [mac_cost(hw_name(f)).energy for f in formats]
    for lin in layers.values():
        shape = tuple(lin.weight.shape)
        if kind == "energy":
            table.append([lin.weight.numel() * x for x in e])
        else:
            bits = [float(s.codec.bits(shape)) for s in specs]
            table.append(bits if kind == "bits" else [b / 8 for b in bits])
    if kind == "bytes":
        return table, 1.0, " bytes"
    return table, float(n_total), (" bits/weight" if kind == "bits" else " x int8 MAC energy")


def tie_groups(names: list[str], tie: bool = True) -> list[list[int]]:
    """Groups of layer indices that take one format: q/k/v (``q_proj``/``query``...) and gate/up
    under one parent module; every other layer alone. Order: by first member."""
    groups: dict[tuple, list[int]] = {}
    for i, n in enumerate(names):
        parent, _, last = n.rpartition(".")
        key: tuple = (i,)
        if tie:
            for j, s in enumerate(TIE_SETS):
                if last in s:
                    key = (parent, j)
        groups.setdefault(key, []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def build_problem(names: list[str], formats, cost: list[list[float]], sens: dict, budget_total: float,
                  tie: bool) -> tuple[Problem, list[list[int]]]:
    """The search problem over tie groups: summed costs and sensitivities of each group's layers."""
    groups = tie_groups(names, tie)
    k = len(formats)
    gc = [[sum(cost[i][j] for i in g) for j in range(k)] for g in groups]
    gl = [[sum(sens[names[i]][f] for i in g) for f in formats] for g in groups]
    labels = ["+".join(names[i].rsplit(".", 1)[-1] if len(g) > 1 else names[i] for i in g)
              if len(g) > 1 else names[g[0]] for g in groups]
    labels = [f"{names[g[0]].rpartition('.')[0]}.{{{lab}}}" if len(g) > 1 else lab for g, lab in zip(groups, labels)]
    return Problem(gc, gl, budget_total, labels, list(formats)), groups


def assignment(problem: Problem, groups, names, choice) -> dict[str, str]:
    """``{layer: format}`` of a solution."""
    out = {}
    for g, k in zip(groups, choice):
        for i in g:
            out[names[i]] = problem.options[k]
    return out


def recipe(assign: dict[str, str], method: str = "rtn") -> PTQConfig:
    """A weight-only :class:`PTQConfig`: the most common format as the default and one override per
    other layer (its exact name as the pattern)."""
    common = Counter(assign.values()).most_common(1)[0][0]
    overrides = tuple((name, f, None) for name, f in assign.items() if f != common)
    return PTQConfig(weight=common, method=method, overrides=overrides)


def override_rules(cfg: PTQConfig) -> list[str]:
    """The ``--override`` rules (``GLOB=FORMAT``) of a recipe, for ``floatlab ptq``."""
    return [f"{p}={w.format if w else 'fp32'}" for p, w, _ in cfg.overrides]


def ptq_command(cfg: PTQConfig, model: str, out: str = "results/advised") -> str:
    """The ``floatlab ptq`` command line that quantizes ``model`` with the recipe."""
    parts = ["floatlab", "ptq", "--model", model, "--format", cfg.weight.format]
    for rule in override_rules(cfg):
        parts += ["--override", rule]
    return " ".join(parts + ["--out", out])


def measure_assignment(lm, assign: dict[str, str], loss_fn, layers: dict) -> float:
    """The real loss of the model with every layer in its assigned format (RTN, weight-only):
    quantized in place and put back."""
    from floatlab.ptq.compare import quantized_variant

    with quantized_variant(lm.model, recipe(assign), []) as model:
        return loss_fn.loss(model)


def _bits_of(assign: dict[str, str], layers: dict) -> float:
    n = sum(l.weight.numel() for l in layers.values())
    return sum(QuantSpec(f).codec.bits(tuple(layers[name].weight.shape)) for name, f in assign.items()) / n


def _energy_of(assign: dict[str, str], layers: dict) -> float | None:
    from floatlab.hw import mac_cost
    try:
        n = sum(l.weight.numel() for l in layers.values())
        return sum(mac_cost(hw_name(f)).energy * layers[name].weight.numel() for name, f in assign.items()) / n
    except ValueError:
        return None


def sensitivities(lm, opts: AdviseOptions, loss_fn, copts, cache=None) -> tuple[dict, str]:
    from floatlab.advise import sensitivity as S

    how = opts.sensitivity
    if how == "auto":
        how = "measured" if lm.kind == "encoder" else "fisher"
    if how == "measured":
        return S.measured_sensitivity(lm, opts.formats, loss_fn, cache=cache)[0], how
    return S.fisher_sensitivity(lm, opts.formats, copts, mode="trace" if how == "fisher-trace" else "diag",
                                calib=opts.calib, cache=cache), how


def check_advise(lm, opts: AdviseOptions):
    """Every check that needs the model, before any long work: ``(layers, cost table, scale,
    unit)``. Raises ``ValueError`` (no quantizable layer; a format that cannot store a layer) and
    :class:`BudgetError` (a budget outside the possible range, which the message gives)."""
    from floatlab.models.loading import linear_layers

    layers = linear_layers(lm.model)
    if not layers:
        raise ValueError(f"{lm.name} has no quantizable layer (no nn.Linear inside its transformer blocks); the "
                         "advisor chooses a format per linear layer")
    names = list(layers)
    for f in opts.formats:
        codec = QuantSpec(f).codec
        for n in names:
            codec.check_shape(tuple(layers[n].weight.shape))
    cost, scale, unit = layer_costs(layers, opts.formats, opts.kind)
    dummy = {n: {f: 0.0 for f in opts.formats} for n in names}
    for b in opts.budgets:
        p, _ = build_problem(names, opts.formats, cost, dummy, b * scale, opts.tie)
        p.loss = [[-c for c in row] for row in p.cost]          # richest = most expensive, for the range
        p.check_budget(scale, unit)
    return layers, cost, scale, unit


def run_advise(lm, opts: AdviseOptions, copts, *, cache=None, log=print) -> dict:
    """Advise ``lm`` (a :class:`~floatlab.models.loading.LoadedModel`) under every budget of
    ``opts``; ``copts``: :class:`~floatlab.ptq.compare.CompareOptions` of the evaluation (pairs,
    windows). Returns the results dict (``rows``: one per searched, uniform and random point with
    its budget, bits per weight, energy, predicted and measured loss and metric; ``recipe``: the
    first budget's PTQConfig dict and ``overrides``; ``sensitivity``; ``environment``).

    Raises:
        ValueError: the model has no quantizable layer, or a format cannot store a layer.
        BudgetError: a budget below the cheapest assignment or at/above the richest (the message
            gives the possible range).
    """
    from floatlab.advise.sensitivity import LossFn
    from floatlab.provenance import environment

    t_all = time.time()
    layers, cost, scale, unit = check_advise(lm, opts)
    names = list(layers)
    loss_fn = LossFn(lm, copts)
    t0 = time.time()
    base = loss_fn.loss(lm.model)
    sens, how = sensitivities(lm, opts, loss_fn, copts, cache)
    t_sens = time.time() - t0
    results = {"model": lm.name, "kind": lm.kind, "metric": loss_fn.metric_name, "loss": loss_fn.describe(),
               "budget_kind": opts.kind, "unit": unit.strip(), "formats": list(opts.formats),
               "sensitivity_method": how, "tie": opts.tie, "fp32": {"loss": base, "metric": loss_fn.metric(base)},
               "layers": {n: list(layers[n].weight.shape) for n in names}, "sensitivity": sens,
               "seconds_sensitivity": t_sens, "threads": torch.get_num_threads(), "rows": [],
               "environment": environment()}
    if opts.check and how != "measured":
        from floatlab.advise import sensitivity as S
        t1 = time.time()
        subset = S.check_layers(names, opts.check)
        measured, _ = S.measured_sensitivity(lm, opts.formats, loss_fn, layers=subset, cache=cache)
        # cheapest first, so the costliest (the widest) is what downgrades are measured from
        order = sorted(opts.formats, key=lambda f: sum(row[opts.formats.index(f)] for row in cost))
        results["proxy_check"] = {**S.rank_agreement(sens, measured, order), "measured": measured,
                                  "seconds": time.time() - t1}

    seen: dict = {}                             # assignment -> (loss, first label): each measured once

    def row(kind, label, assign, budget=None, solution: Solution | None = None, predicted=None):
        r = {"kind": kind, "label": label, "budget": budget, "bits_per_weight": _bits_of(assign, layers),
             "energy": _energy_of(assign, layers), "predicted": predicted,
             "formats_used": dict(Counter(assign.values()))}
        if solution is not None:
            r.update({"solver": solution.solver, "seconds_solve": solution.seconds, "solver_extra": solution.extra})
        if opts.verify or kind != "searched":
            key = tuple(sorted(assign.items()))
            if key in seen:                     # another solver (or control) found the same assignment
                r["same_as"] = seen[key][1]
            else:
                seen[key] = (measure_assignment(lm, assign, loss_fn, layers), f"{label} @ {budget}")
            loss = seen[key][0]
            r.update({"loss": loss, "metric": loss_fn.metric(loss)})
        results["rows"].append(r)
        return r

    total = len(opts.budgets) * (len(opts.solvers) + opts.random) + (len(opts.formats) if opts.uniform else 0)
    with _progress.task("advise: verify end to end", total, "models") as task:
        for bi, b in enumerate(opts.budgets):
            problem, groups = build_problem(names, opts.formats, cost, sens, b * scale, opts.tie)
            for solver in opts.solvers:
                sol = SOLVERS[solver](problem)
                assign = assignment(problem, groups, names, sol.choice)
                r = row("searched", solver, assign, b, sol, base + sol.loss)
                r["assignment"] = assign
                if bi == 0 and solver == opts.solvers[0]:
                    cfg = recipe(assign)
                    results["recipe"] = cfg.to_dict()
                    results["overrides"] = override_rules(cfg)
                task.advance(1, note=f"{solver} @ {b:g}")
            for k, choice in enumerate(random_assignments(problem, opts.random, seed=opts.seed + bi)):
                assign = assignment(problem, groups, names, choice)
                row("random", f"random {k}", assign, b, predicted=base + problem.total_loss(choice))
                task.advance(1, note=f"random {k} @ {b:g}")
        if opts.uniform:
            for f in opts.formats:
                assign = {n: f for n in names}
                row("uniform", f, assign, predicted=base + sum(sens[n][f] for n in names))
                task.advance(1, note=f"uniform {f}")
    results["seconds_total"] = time.time() - t_all
    return results


def _x(r: dict, kind: str) -> float | None:
    return r["energy"] if kind == "energy" else r["bits_per_weight"]


def advise_table(results: dict) -> list[list[str]]:
    """Header plus one row per point: kind, label, budget, bits/weight, energy, predicted and
    measured metric."""
    m = results["metric"]
    head = ["point", "budget", "bits/weight", "energy (x int8 MAC)", f"predicted {m}", m, "formats used"]
    fp = results["fp32"]
    rows = [head, ["fp32", "-", "32", "-", "-", f"{fp['metric']:.5g}", "-"]]
    conv = (lambda l: 1 - l) if results["kind"] == "encoder" else math.exp
    for r in results["rows"]:
        label = r["label"] if r["kind"] != "searched" else f"searched ({r['label']})"
        used = ", ".join(f"{k} x{v}" for k, v in sorted(r["formats_used"].items()))
        rows.append([label, "-" if r["budget"] is None else f"{r['budget']:g}", f"{r['bits_per_weight']:.4f}",
                     "-" if r["energy"] is None else f"{r['energy']:.3f}",
                     "-" if r["predicted"] is None else f"{conv(r['predicted']):.5g}",
                     f"{r['metric']:.5g}" if "metric" in r else "-", used])
    return rows


def plot_pareto(results: dict, path, kind: str = "bits") -> None:
    """Measured metric against bits per weight (or energy): searched points joined by budget,
    uniform formats labelled, random assignments as grey dots, the fp32 value dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.6, 4.6))
    rows = [r for r in results["rows"] if "metric" in r and _x(r, kind) is not None]
    rnd = [r for r in rows if r["kind"] == "random"]
    if rnd:
        ax.scatter([_x(r, kind) for r in rnd], [r["metric"] for r in rnd], c="0.6", s=14, label="random (same budget)")
    for solver in dict.fromkeys(r["label"] for r in rows if r["kind"] == "searched"):
        pts = sorted((_x(r, kind), r["metric"]) for r in rows if r["kind"] == "searched" and r["label"] == solver)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"searched ({solver})")
    for r in rows:
        if r["kind"] == "uniform":
            ax.scatter([_x(r, kind)], [r["metric"]], marker="s", c="k", s=22)
            ax.annotate(r["label"], (_x(r, kind), r["metric"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(results["fp32"]["metric"], color="k", ls="--", lw=1, label="fp32")
    ax.set_xlabel("bits per weight (every stored bit)" if kind != "energy" else "MAC energy per weight (x int8 MAC)")
    m = results["metric"]
    ax.set_ylabel("mean cosine to fp32 (higher is better)" if m == "cos_mean" else "perplexity (lower is better)")
    if m == "perplexity":
        ax.set_yscale("log")
    ax.set_title(f"{results['model']}: per-layer formats ({results['sensitivity_method']} sensitivity)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    from floatlab.atomic import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def render_advise(results: dict, out) -> None:
    """Write ``results.json``, ``recipe.json`` (the PTQConfig), ``overrides.txt`` (one
    ``--override`` rule per line), ``report.md`` and ``pareto.png`` into ``out``."""
    from pathlib import Path

    from floatlab.atomic import write_json, write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    if "recipe" in results:
        write_json(out / "recipe.json", results["recipe"])
        write_text(out / "overrides.txt", "\n".join(results["overrides"]) + "\n")
    plot_pareto(results, out / "pareto.png", results["budget_kind"])
    rows = advise_table(results)
    lines = [f"# floatlab advise: {results['model']} ({results['budget_kind']} budget, "
             f"{results['sensitivity_method']} sensitivity)", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += ["", "![pareto](pareto.png)", "", f"command: `{results.get('command', '')}`", ""]
    write_text(out / "report.md", "\n".join(lines))
