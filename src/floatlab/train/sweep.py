"""The FP4 design-space sweep: a grid of block-format training recipes, one table, one plot.

A sweep file (YAML or JSON) names the grid; every combination is a *cell*, trained like any
recipe by :func:`floatlab.train.loop.train_run` under ``out/runs/<cell>/seed<k>/`` (so a
killed sweep resumes: finished cells are reused, the interrupted one continues from its last
checkpoint, nothing finished is trained again)::

    name: fp4-design-space          # free text
    preset: small                   # smoke | small | paper
    steps: 60                       # optional: the preset's otherwise
    seeds: 2                        # a count (0..N-1) or a list of seeds
    rht_size: 16                    # RHT length wherever an RHT is on
    grid:
      element: [e2m1]               # element formats
      scale: [e8m0, ue4m3+ts, ue5m3]  # <scale format>[:<rule>][+ts]  (+ts: NVFP4's FP32 tensor scale)
      block: [16, 32]
      sr: [none, grads]             # none | grads | backward | all
      rht: [none, wgrad]            # none | wgrad | backward | all
      tensor_scaling: [none]        # none | current | delayed (per-tensor power-of-two scaling)
    recipes: [hif4, mxfp4_paper]    # optional: named recipes run beside the grid
    options: {}                     # optional: TrainOptions (dtype, loss_scale...)

Roles: ``grads`` is the output-gradient operand of dgrad and wgrad (what SR is usually applied
to); ``backward`` every operand of dgrad and wgrad; ``all`` every operand of the three GEMMs.
An RHT on a GEMM transforms both of its operands along the contraction dimension; ``wgrad``
is NVIDIA's placement, ``backward`` adds dgrad, ``all`` adds fprop. Each cell's format is the
spelled block format ``<element>/<scale>/<block>[/<rule>][/ts]`` for every operand of every
quantized layer (the bf16 recipe's keep rules: embeddings, norms and the LM head stay float32).

**Overhead** of a cell, two numbers:

* ``extra_ops``: extra element-wise operations per quantized operand element, averaged over the
  six operands of a linear layer (fprop, dgrad and wgrad, two operands each) -- a count, not a
  measurement: SR costs 2 per element (draw a random number, add it before truncating), an RHT of
  length ``h`` costs ``log2(h) + 1`` per element of each of its GEMM's two operands (a fast
  Walsh-Hadamard transform: ``log2 h`` additions/subtractions, and the random sign), per-tensor
  scaling and the ``+ts`` tensor scale cost 2 (the tensor's amax, one multiply). A GEMM with
  contraction length ``K`` does ``2K`` operations per output element for comparison.
* ``time_ratio``: the measured median step time over bf16's in the same sweep (emulation on
  this machine: it says what the emulation costs here, not what hardware would pay).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from floatlab.nn.recipe import GemmSpec, LinearSpec, Recipe, Scaling, TensorSpec
from floatlab.nn.recipes import BF16, get_recipe

ROLES = ("none", "grads", "backward", "all")
RHT_ROLES = ("none", "wgrad", "backward", "all")
SCALINGS = ("none", "current", "delayed")
AXES = ("element", "scale", "block", "sr", "rht", "tensor_scaling")
DEFAULT_GRID = {"element": ["e2m1"], "scale": ["e8m0"], "block": [32], "sr": ["none"], "rht": ["none"],
                "tensor_scaling": ["none"]}


class SweepError(ValueError):
    """A sweep file that cannot be read; the message names the file and the key."""


@dataclass(frozen=True)
class Cell:
    """One grid point: its axes, the block format it spells, its recipe and counted overhead."""

    name: str
    axes: dict
    format: str
    recipe: Recipe
    extra_ops: float


@dataclass
class Sweep:
    name: str = "sweep"
    preset: str = "small"
    steps: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    rht_size: int = 16
    grid: dict = field(default_factory=lambda: dict(DEFAULT_GRID))
    recipes: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        return [make_cell(dict(zip(AXES, values)), self.rht_size)
                for values in itertools.product(*(self.grid[a] for a in AXES))]


def _scale_parts(scale: str) -> tuple[str, str | None, bool]:
    s = str(scale).strip().lower()
    ts = s.endswith("+ts")
    s = s[:-3] if ts else s
    fmt, _, rule = s.partition(":")
    return fmt, (rule or None), ts


def cell_format(element: str, scale: str, block: int) -> str:
    fmt, rule, ts = _scale_parts(scale)
    return f"{element}/{fmt}/{block}" + (f"/{rule}" if rule else "") + ("/ts" if ts else "")


def _roles(which: str) -> set[tuple[str, str]]:
    """(gemm, operand) pairs a role name covers."""
    grads = {("dgrad", "a"), ("wgrad", "a")}
    backward = grads | {("dgrad", "b"), ("wgrad", "b")}
    return {"none": set(), "grads": grads, "backward": backward,
            "all": backward | {("fprop", "a"), ("fprop", "b")}}[which]


def _rht_gemms(which: str) -> set[str]:
    return {"none": set(), "wgrad": {"wgrad"}, "backward": {"dgrad", "wgrad"},
            "all": {"fprop", "dgrad", "wgrad"}}[which]


def make_cell(axes: dict, rht_size: int = 16) -> Cell:
    """The recipe and overhead of one grid point (``axes``: element, scale, block, sr, rht,
    tensor_scaling). Raises :class:`SweepError` for a value out of its axis."""
    from floatlab.formats.registry import get_format
    fmt = cell_format(axes["element"], axes["scale"], int(axes["block"]))
    try:
        spec = get_format(fmt)
    except ValueError as err:
        raise SweepError(f"grid point {axes}: {err}") from None
    if spec.kind != "block":
        raise SweepError(f"grid point {axes}: {fmt!r} is not a block format")
    if axes["sr"] not in ROLES:
        raise SweepError(f"sr must be one of {', '.join(ROLES)}, got {axes['sr']!r}")
    if axes["rht"] not in RHT_ROLES:
        raise SweepError(f"rht must be one of none, wgrad, backward, all, got {axes['rht']!r}")
    if axes["tensor_scaling"] not in SCALINGS:
        raise SweepError(f"tensor_scaling must be one of {', '.join(SCALINGS)}, got {axes['tensor_scaling']!r}")
    sr, rht = _roles(axes["sr"]), _rht_gemms(axes["rht"])
    scaling = Scaling(axes["tensor_scaling"])
    gemms = {}
    ops = 0.0
    fmt_ts = _scale_parts(axes["scale"])[2]
    for g in ("fprop", "dgrad", "wgrad"):
        ts = {}
        for o in ("a", "b"):
            ts[o] = TensorSpec(fmt, "sr" if (g, o) in sr else None, True, "contraction", scaling)
            ops += 2 * ((g, o) in sr) + 2 * (scaling is not Scaling.NONE) + 2 * fmt_ts
            ops += (math.log2(rht_size) + 1) * (g in rht)
        gemms[g] = GemmSpec(ts["a"], ts["b"], rht_size if g in rht else 0)
    scale_tag = str(axes["scale"]).lower().replace("+", "").replace(":", "_")
    name = (f"{axes['element']}-{scale_tag}-b{axes['block']}-sr_{axes['sr']}-rht_{axes['rht']}"
            f"-pts_{axes['tensor_scaling']}")
    recipe = Recipe(name, LinearSpec(gemms["fprop"], gemms["dgrad"], gemms["wgrad"]), attention=BF16,
                    description=f"sweep cell: {fmt}, SR on {axes['sr']}, RHT{rht_size} on {axes['rht']}, "
                                f"per-tensor scaling {axes['tensor_scaling']}")
    return Cell(name, dict(axes), fmt, recipe, ops / 6)


def load_sweep(path) -> Sweep:
    """Read and check a sweep file (``.yaml``/``.yml``/``.json``). Raises ``FileNotFoundError``
    or :class:`SweepError` naming the file and the key at fault."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"sweep file {str(p)!r} does not exist (a .yaml/.yml/.json file)")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            d = json.loads(text)
        elif p.suffix.lower() in (".yaml", ".yml"):
            import yaml
            d = yaml.safe_load(text)
        else:
            raise SweepError(f"{p}: a sweep file ends in .yaml, .yml or .json, not {p.suffix or '(no suffix)'!r}")
    except (json.JSONDecodeError, ImportError) as err:
        raise SweepError(f"{p}: {err}") from None
    except Exception as err:          # yaml.YAMLError
        if isinstance(err, SweepError):
            raise
        raise SweepError(f"{p}: not valid YAML ({str(err).splitlines()[0]})") from None
    try:
        return sweep_from_dict(d)
    except SweepError as err:
        raise SweepError(f"{p}: {err}") from None


def sweep_from_dict(d) -> Sweep:
    if not isinstance(d, dict):
        raise SweepError(f"a sweep is a mapping with grid, preset, steps, seeds...; got {type(d).__name__}")
    known = {"name", "preset", "steps", "seeds", "rht_size", "grid", "recipes", "options"}
    unknown = set(d) - known
    if unknown:
        raise SweepError(f"unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    s = Sweep()
    s.name = str(d.get("name", s.name))
    s.preset = str(d.get("preset", s.preset))
    steps = d.get("steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise SweepError(f"steps must be an integer >= 1, got {steps!r}")
    s.steps = steps
    seeds = d.get("seeds", 1)
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        s.seeds = list(range(seeds))
    elif isinstance(seeds, list) and seeds and all(isinstance(v, int) and v >= 0 for v in seeds):
        s.seeds = list(dict.fromkeys(seeds))
    else:
        raise SweepError(f"seeds must be a count >= 1 or a list of seeds >= 0, got {seeds!r}")
    h = d.get("rht_size", 16)
    if isinstance(h, bool) or not isinstance(h, int) or h < 16 or h > 256 or h & (h - 1):
        raise SweepError(f"rht_size must be a power of two in 16..256, got {h!r}")
    s.rht_size = h
    grid = d.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"grid must be a mapping of axes ({', '.join(AXES)}) to lists, got {grid!r}")
    bad = set(grid) - set(AXES)
    if bad:
        raise SweepError(f"unknown grid axis {', '.join(sorted(bad))} (axes: {', '.join(AXES)})")
    s.grid = {a: (list(grid[a]) if isinstance(grid.get(a), list) else [grid[a]]) if a in grid else
              list(DEFAULT_GRID[a]) for a in AXES}
    for a, values in s.grid.items():
        if not values:
            raise SweepError(f"grid.{a} is empty")
    s.recipes = list(d.get("recipes") or [])
    for r in s.recipes:
        try:
            get_recipe(r)
        except (ValueError, TypeError, FileNotFoundError) as err:
            raise SweepError(f"recipes: {err}") from None
    s.options = dict(d.get("options") or {})
    from floatlab.train.options import options_from
    try:
        options_from(s.options)
    except (ValueError, TypeError) as err:
        raise SweepError(f"options: {err}") from None
    cells = s.cells()                  # every grid point checked now, before any training
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise SweepError("the grid repeats a value (two cells would share a run folder)")
    return s


def run_sweep(sweep: Sweep, out, corpus=None, device: str = "cpu", fresh: bool = False,
              on_run=None, progress=None) -> dict:
    """Train every cell (and ``sweep.recipes``, and bf16, the baseline) for every seed, then
    write ``sweep.json``, ``sweep.csv``, ``sweep.md`` and ``sweep.png`` into ``out``.

    Every run folder is checked first (:func:`~floatlab.train.experiment.plan_runs`): a
    checkpoint made with other settings raises ``ConfigMismatch`` before anything trains.
    ``on_run(name, seed, plan)`` is called before each run (``plan``: "new", "reused",
    "resumed at step k"); ``progress(name, seed, total)`` may return a per-step callback.
    Returns the summary written to ``sweep.json``.
    """
    from floatlab.train.data import Corpus
    from floatlab.train.experiment import plan_runs, summarize
    from floatlab.train.loop import train_run
    from floatlab.train.options import options_from
    from floatlab.train.presets import get_preset

    out = Path(out)
    preset = get_preset(sweep.preset).with_steps(sweep.steps)
    data = corpus if isinstance(corpus, Corpus) else Corpus.load(corpus or "pydoc")
    options = options_from(sweep.options)
    cells = sweep.cells()
    recipes = [get_recipe("bf16"), *(c.recipe for c in cells), *(get_recipe(r) for r in sweep.recipes)]
    seen = {}
    for r in recipes:
        seen.setdefault(r.name, r)
    recipes = list(seen.values())
    plan = plan_runs(recipes, sweep.seeds, preset, out, data, None, fresh, options)
    results = {}
    for r in recipes:
        for seed in sweep.seeds:
            if on_run is not None:
                on_run(r.name, seed, plan[r.name, seed])
            cb = progress(r.name, seed, preset.steps) if progress else None
            res = train_run(r, seed, preset, out / "runs" / r.name / f"seed{seed}", data, progress=cb,
                            device=device, fresh=fresh, options=options)
            results.setdefault(r.name, []).append(res)
    summary = summarize(results, preset, sweep.seeds, recipes={r.name: r for r in recipes})
    rows = table_rows(summary, cells, sweep)
    doc = {"sweep": {"name": sweep.name, "preset": preset.name, "steps": preset.steps, "seeds": sweep.seeds,
                     "rht_size": sweep.rht_size, "grid": sweep.grid, "recipes": sweep.recipes,
                     "options": options.to_dict()},
           "bf16": {"final_loss": summary["recipes"]["bf16"]["final_loss"],
                    "seed_spread": summary["bf16_seed_spread"],
                    "step_time_s": summary["recipes"]["bf16"]["step_time_s"]},
           "rows": rows, "corpus": {"source": data.source, "sha256": data.digest}}
    from floatlab.atomic import atomic_path, write_json
    from floatlab.provenance import environment
    doc["environment"] = environment()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", doc)
    with atomic_path(out / "sweep.csv") as tmp:
        write_csv(rows, tmp)
    with atomic_path(out / "sweep.md") as tmp:
        Path(tmp).write_text(markdown(doc), encoding="utf-8")
    with atomic_path(out / "sweep.png") as tmp:
        plot(doc, tmp)
    return doc


COLUMNS = ("cell", "format", "sr", "rht", "tensor_scaling", "final_loss", "final_loss_std",
           "rel_error_pct", "rel_error_paired_std_pct", "extra_ops", "time_ratio")


def table_rows(summary: dict, cells: list[Cell], sweep: Sweep) -> list[dict]:
    """One row per cell and named recipe: final loss, relative error to bf16 (percent, mean over
    seeds and the seed-paired std), counted extra ops and the measured step-time ratio."""
    rows = []
    by_name = {c.name: c for c in cells}
    for name, r in summary["recipes"].items():
        if name == "bf16":
            continue
        c = by_name.get(name)
        rows.append({
            "cell": name, "format": c.format if c else name,
            "sr": c.axes["sr"] if c else "", "rht": c.axes["rht"] if c else "",
            "tensor_scaling": c.axes["tensor_scaling"] if c else "",
            "scale": c.axes["scale"] if c else "", "block": c.axes["block"] if c else "",
            "final_loss": r["final_loss"], "final_loss_std": r["final_loss_std"],
            "rel_error_pct": 100 * r["relative_to_bf16"], "rel_error_paired_std_pct": 100 * r["relative_to_bf16_std"],
            "rel_error_per_seed_pct": [100 * v for v in r["relative_to_bf16_per_seed"]],
            "extra_ops": c.extra_ops if c else recipe_extra_ops(get_recipe(name)),
            "time_ratio": r["step_time_vs_bf16"],
        })
    return rows


def recipe_extra_ops(recipe: Recipe) -> float:
    """The counted overhead (see the module docstring) of a named recipe's default spec."""
    from floatlab.formats.registry import get_format
    ops = 0.0
    spec = recipe.default
    for g in ("fprop", "dgrad", "wgrad"):
        gs = spec.gemm(g)
        for t in (gs.a, gs.b):
            if t.format is None:
                continue
            ops += 2 * t.stochastic + 2 * (t.scaling is not Scaling.NONE)
            ops += 2 * bool(getattr(get_format(t.format), "tensor_scale", False))
            ops += (math.log2(gs.hadamard) + 1) if gs.hadamard else 0
    return ops / 6


def write_csv(rows: list[dict], path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([_fmt(r[c]) for c in COLUMNS])


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def markdown(doc: dict) -> str:
    s = doc["sweep"]
    b = doc["bf16"]
    lines = [f"Sweep {s['name']!r}: {s['preset']} preset, {s['steps']} steps, seeds {s['seeds']}; bf16 final "
             f"loss {b['final_loss']:.4f} (seed spread {100 * b['seed_spread']['relative']:.2f}%), "
             f"{1e3 * b['step_time_s']:.0f} ms/step", "",
             "| cell | format | SR | RHT | per-tensor scaling | final loss | vs bf16 | paired std | extra ops/elem | time vs bf16 |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(doc["rows"], key=lambda r: r["rel_error_pct"]):
        t = f"{r['time_ratio']:.2f}x" if r["time_ratio"] else "-"
        lines.append(f"| {r['cell']} | `{r['format']}` | {r['sr'] or '-'} | {r['rht'] or '-'} | "
                     f"{r['tensor_scaling'] or '-'} | {r['final_loss']:.4f} | {r['rel_error_pct']:+.2f}% | "
                     f"{r['rel_error_paired_std_pct']:.2f}% | {r['extra_ops']:.2f} | {t} |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path) -> None:
    """Relative loss error against counted extra ops (left) and measured step-time ratio (right);
    colour: scale format, marker: block size, label: stabilizers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    scales = sorted({str(r["scale"]) or r["cell"] for r in rows})
    cmap = plt.get_cmap("tab10")
    colour = {s: cmap(i % 10) for i, s in enumerate(scales)}
    markers = {}
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    spread = 100 * doc["bf16"]["seed_spread"]["relative"]
    for ax, key, label in ((axes[0], "extra_ops", "extra element-wise ops per operand element (counted)"),
                           (axes[1], "time_ratio", "step time / bf16 step time (measured, emulated)")):
        for r in rows:
            if r[key] is None:
                continue
            sc = str(r["scale"]) or r["cell"]
            m = markers.setdefault(str(r["block"]), "os^Dv<>p"[len(markers) % 8])
            ax.errorbar(r[key], r["rel_error_pct"], yerr=r["rel_error_paired_std_pct"], fmt=m,
                        color=colour[sc], ms=7, capsize=2, alpha=0.85)
            tag = r["cell"] if not r["scale"] else f"{_short(r['sr'])}/{_short(r['rht'])}"
            ax.annotate(tag, (r[key], r["rel_error_pct"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.axhline(0, color="black", lw=1, ls="--")
        if spread > 0:
            ax.axhspan(-spread, spread, color="gray", alpha=0.2)
        ax.set_xlabel(label)
        ax.set_ylabel("final validation loss vs bf16 (%)")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colour[s], marker="o", ls="", label=f"scale {s}") for s in scales]
    handles += [plt.Line2D([], [], color="gray", marker=m, ls="", label=f"block {b}") for b, m in markers.items()]
    axes[1].legend(handles=handles, fontsize=8)
    s = doc["sweep"]
    fig.suptitle(f"{s['name']}: quality vs overhead ({s['preset']} preset, {s['steps']} steps, "
                 f"{len(s['seeds'])} seed(s); labels SR/RHT roles; grey band: bf16 seed spread)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def _short(role: str) -> str:
    return {"none": "-", "grads": "g", "backward": "bw", "all": "all", "wgrad": "wg"}.get(role, role)


__all__ = ["Sweep", "Cell", "SweepError", "load_sweep", "sweep_from_dict", "make_cell", "run_sweep",
           "cell_format", "recipe_extra_ops"]
