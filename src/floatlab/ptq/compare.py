"""``floatlab compare``: quantize one real model into many formats (and methods) and rank them.

Encoders (MiniLM): the ranking metric is the cosine similarity of each text's sentence embedding
to the fp32 model's (mean over texts; the worst text is reported too), plus, on the built-in
text, retrieval recall@1/@10 on the documentation task of :mod:`floatlab.eval.data` with 95%
Wilson intervals and the paired change vs fp32 with a bootstrap interval. Causal LMs: perplexity
on non-overlapping windows of the evaluation text (with the BOS token in front where the
tokenizer adds one). Both: per-layer output SQNR inside the quantized model.

Data: the built-in text (Python's documentation) unless :class:`CompareOptions` names a user's
own evaluation or calibration texts (:func:`floatlab.eval.data.load_texts`); results record which
(path, size, SHA-256).

The grid of cells (every method x every format) can be split over processes started by
``torchrun`` (:mod:`floatlab.parallel`): each rank quantizes and evaluates its own cells, rank 0
merges the rows in grid order, so the results equal one process's. One quantized variant is
held at a time: methods that only round (``rtn``, ``gptq``) quantize the loaded model in place
and put its own linear layers back afterwards (no copy of the model), and where the checkpoint
gives the fp32 weights back exactly (:class:`CheckpointWeights`) those layers do not hold their
weights meanwhile; methods that transform the model (rotation, SmoothQuant, AWQ, the
reconstruction methods) work on a copy, freed before the next cell. The quantized layers keep
their packed codes and scales and decode them in each forward pass (``quantize_model(...,
packed=True)``: the same weights bit for bit, checked per layer), not a float32 copy. Where the
model's weights lie in the checkpoint's memory mapping, every pass over the fp32 model holds one
layer's pages at a time (:meth:`CheckpointWeights.paged`). Causal LMs' GPTQ collects its Hessians
one block at a time for each cell (encoders: once for every format). The fp32 reference outputs
of the SQNR column wait in a temporary file (:class:`floatlab.eval.metrics.SpilledOutputs`).
Freed memory is returned to the operating system after every cell.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
import torch

from floatlab import progress as _progress
from floatlab.eval import metrics
from floatlab.eval.data import TextData, builtin_data, retrieval_pairs, retrieval_subset
from floatlab.models.loading import LoadedModel, linear_layers
from floatlab.ptq.apply import quantize_model
from floatlab.ptq.config import PTQConfig
from floatlab.ptq.quantizer import QuantSpec

DEFAULT_FORMATS = ("bf16", "e4m3", "e5m2", "hif8", "mxfp8_e4m3", "int8", "mxfp4", "nvfp4", "hif4", "int4")
BUILTIN_SOURCE = "pydoc_data.topics (CPython documentation)"


@dataclass
class CompareOptions:
    """What ``run_compare`` (and ``measure_single``) do.

    ``method``: one PTQ method chain (``"rtn"``, ``"rotate+gptq"``) or several separated by commas
    (``"rtn,gptq"``): the grid is every method x every format. ``calib_data``/``eval_data``: a
    user's own texts (``None``: the built-in text). ``nonfinite_tokens``: PTQConfig's policy.
    ``device``: where the model runs (the model must already be there)."""

    formats: tuple[str, ...] = DEFAULT_FORMATS
    method: str = "rtn"
    weights_only: bool = False
    calib: int = 32                 # calibration texts/windows (GPTQ, AWQ, SmoothQuant)
    pairs: int = 64                 # retrieval pairs (encoders, built-in text); 0 = all 511
    max_length: int = 64            # tokens per text (encoders)
    window: int = 256               # perplexity window (causal LMs)
    windows: int = 16               # perplexity windows (causal LMs)
    sqnr_texts: int = 8
    extra: dict = field(default_factory=dict)
    calib_data: TextData | None = None
    eval_data: TextData | None = None
    nonfinite_tokens: str = "error"
    device: str = "cpu"

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.method.split(",") if m.strip())

    def eval_source(self) -> TextData:
        return self.eval_data or builtin_data()

    def calib_source(self) -> TextData:
        return self.calib_data or builtin_data()

    def shared_source(self) -> bool:
        """Calibration and evaluation read the same text (then calibration avoids the evaluated part)."""
        return self.calib_source().sha256 == self.eval_source().sha256


def _encoder_inputs(lm: LoadedModel, texts, max_length):
    return dict(lm.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def evaluation_texts(opts: CompareOptions) -> tuple[list[str], int]:
    """Encoders: the evaluated texts and the number of retrieval pairs among them (the built-in
    text: queries then passages of ``opts.pairs`` pairs; a user's own texts: all of them, no pairs)."""
    if opts.eval_data is None:
        pairs = retrieval_subset(opts.pairs or None)
        return [p.query for p in pairs] + [p.passage for p in pairs], len(pairs)
    return list(opts.eval_data.texts), 0


def evaluation_windows(lm: LoadedModel, opts: CompareOptions, bos: bool | None = None) -> torch.Tensor:
    """Causal LMs: the evaluated windows (``opts.windows`` of ``opts.window`` tokens, BOS in front
    where the tokenizer adds one)."""
    bos = metrics.adds_bos(lm.tokenizer) if bos is None else bos
    return metrics.token_windows(lm.tokenizer, opts.eval_source().joined(), opts.window, opts.windows, bos=bos)


def calibration_batches(lm: LoadedModel, n: int, opts: CompareOptions, *, skip: int = 0) -> list[dict]:
    """``n`` calibration inputs, disjoint from the evaluated texts where both come from the same
    text (built-in encoders: passages not in the retrieval subset; causal LMs: windows after the
    evaluated ones); from a user's own calibration data: its first ``n`` texts (encoders,
    truncated to ``opts.max_length`` tokens) or windows (causal LMs, BOS in front where the
    tokenizer adds one). Batches of 8 texts / 4 windows, on ``opts.device``."""
    if n <= 0:
        return []
    if lm.kind == "encoder":
        if opts.calib_data is None:
            used = {p.query for p in retrieval_subset(opts.pairs or None)} if opts.eval_data is None else set()
            pool = [p.passage for p in retrieval_pairs() if p.query not in used] or [p.passage for p in retrieval_pairs()]
        else:
            pool = list(opts.calib_data.texts)
        texts = pool[:n]
        return [_to(_encoder_inputs(lm, texts[i:i + 8], opts.max_length), opts.device)
                for i in range(0, len(texts), 8)]
    bos = metrics.adds_bos(lm.tokenizer)
    wins = metrics.token_windows(lm.tokenizer, opts.calib_source().joined(), opts.window, bos=bos)
    start = opts.windows if opts.shared_source() and len(wins) > opts.windows + n else 0
    sel = wins[start:start + n]
    return [{"input_ids": sel[i:i + 4].to(opts.device)} for i in range(0, len(sel), 4)]


def data_record(opts: CompareOptions, calibrates: bool) -> dict:
    """Which data a result used: ``{"evaluation": source, "calibration": source or None}``
    (:class:`floatlab.eval.data.TextData` ``.source``: path, kind, bytes, sha256, texts)."""
    return {"evaluation": opts.eval_source().source, "calibration": opts.calib_source().source if calibrates else None}


def needs_calibration(method: str) -> bool:
    """Whether a method chain runs calibration data (GPTQ, AWQ, SmoothQuant, and the block-wise
    reconstruction methods where present)."""
    cfg = PTQConfig(weight=None, method=method)
    if hasattr(cfg, "needs_calibration"):
        return cfg.needs_calibration()
    transforms, rounder = cfg.steps()
    return rounder != "rtn" or any(t in ("awq", "smoothquant") for t in transforms)


class CheckpointWeights:
    """The fp32 weights of a model's linear layers, given back by its safetensors checkpoint, so
    that ``compare`` need not hold them in memory while a quantized variant of the model is alive.

    Two ways, per layer: a weight that lies in the checkpoint file's memory mapping (transformers
    maps a float32 safetensors file and its tensors point into it) stays where it is and its
    pages are dropped (``madvise(MADV_DONTNEED)``, the whole pages inside the tensor only): the
    next read pages the file's bytes in again. Any other weight (converted from bf16, on a GPU)
    is freed and read back from the checkpoint afterwards. Either way the model computes with the
    checkpoint's bytes again, so :meth:`check` returns ``None`` (the caller then keeps the fp32
    layers in memory) unless the checkpoint holds every layer's weight and gives back exactly the
    tensor the model holds (float32 after conversion, the same values and signs bit for bit, the
    same strides), compared layer by layer once; a model whose loading renamed, split
    (mixture-of-experts experts) or changed its weights keeps them."""

    MADV_DONTNEED = 4

    def __init__(self, checkpoint, transposed: set[str], layout: dict[str, tuple], mapped: set[str],
                 maps: list[tuple[int, int]] | None = None):
        self.checkpoint, self.transposed, self.layout, self.mapped = checkpoint, transposed, layout, mapped
        self.maps = maps or []           # (start, end) of the checkpoint files' private mappings

    def drop(self, p: torch.Tensor) -> None:
        """Drop the resident pages of ``p`` if it lies in the checkpoint's mapping (the next read
        pages the file in again; see :meth:`paged`); anything else is left alone."""
        if _inside(p, self.maps):
            _drop_pages(p)

    def read(self, name: str) -> torch.Tensor:
        """Layer ``name``'s fp32 weight as the loaded model held it (a new tensor)."""
        shape, stride, device = self.layout[name][:3]
        t = self.checkpoint.tensors([f"{name}.weight"])[f"{name}.weight"]
        if name in self.transposed:
            t = t.t()
        t = t.to(torch.float32)
        w = torch.empty_strided(shape, stride, dtype=torch.float32, device=device)
        w.copy_(t)
        return w

    def release(self, name: str, lin: torch.nn.Module) -> None:
        """Give up the memory of ``lin``'s weight (the layer ``name``, swapped out of the model)."""
        w = lin._parameters["weight"]
        if name in self.mapped and w.data_ptr() == self.layout[name][4] and w.nbytes == self.layout[name][5]:
            _drop_pages(w)                 # still the checkpoint-mapped tensor that check() compared
            return
        lin._parameters["weight"] = torch.nn.Parameter(torch.empty(w.shape, dtype=w.dtype, device="meta"),
                                                       requires_grad=w.requires_grad)

    @contextlib.contextmanager
    def paged(self, model: torch.nn.Module):
        """Inside the block, every module of ``model`` whose own parameters lie in the checkpoint
        file's memory mapping (the fp32 linears, embeddings, a tied LM head, norms) drops their
        resident pages right after each of its forward passes (:func:`_drop_pages`), so a pass
        over the fp32 model holds one layer's weights at a time instead of all of them: the
        pages stay in the system's page cache (not this process's memory; reclaimable) and the
        next read maps them again (a minor fault; from disk where the system dropped them). The
        values are the file's bytes either way, so the results are the same bit for bit.
        Checked at each call: a parameter no longer in the mapping (a deep copy, a swapped layer)
        is left alone. The caller must not write into those parameters in place (a written
        page of a private mapping would be dropped back to the file's bytes): ``compare`` and
        ``ptq`` without transforms only read them. A no-op where nothing is mapped."""
        maps = self.maps
        handles = []

        def drop(mod, args, out):
            for p in mod._parameters.values():
                if p is not None and _inside(p, maps):
                    _drop_pages(p)
        if maps:
            for mod in model.modules():
                if any(p is not None and _inside(p, maps) for p in mod._parameters.values()):
                    handles.append(mod.register_forward_hook(drop))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def restore(self, name: str, lin: torch.nn.Module) -> None:
        """``lin``'s fp32 weight back after :meth:`release` (a mapped one pages itself in when read)."""
        if lin._parameters["weight"].device.type == "meta":
            lin._parameters["weight"] = torch.nn.Parameter(self.read(name), requires_grad=self.layout[name][3])

    @classmethod
    @torch.no_grad()
    def check(cls, lm: LoadedModel, layers: dict[str, torch.nn.Module]) -> "CheckpointWeights | None":
        from floatlab.models.lazy import Checkpoint

        try:
            ckpt = Checkpoint(lm.folder, transposed=[n for n, c in (lm.converted or {}).items() if c == "Conv1D"])
        except Exception:                                 # noqa: BLE001 - no usable checkpoint: keep the layers
            return None
        layout, mapped = {}, set()
        maps = _file_mappings({p.resolve() for p in ckpt.files.values()})
        src = cls(ckpt, ckpt.transposed, layout, mapped, maps)
        for name, lin in layers.items():
            w = lin._parameters.get("weight")
            if (w is None or w.dtype != torch.float32 or f"{name}.weight" not in ckpt.files
                    or w.device.type == "meta"):
                return None
            layout[name] = (tuple(w.shape), w.stride(), w.device, w.requires_grad, w.data_ptr(), w.nbytes)
            try:
                back = src.read(name)
            except Exception:                             # noqa: BLE001 - unreadable: keep the layers
                return None
            if back.shape != w.shape or back.stride() != w.stride() or not torch.equal(back, w) \
                    or not torch.equal(torch.signbit(back), torch.signbit(w)):
                return None
            if _inside(w, maps):
                mapped.add(name)
                _drop_pages(w)           # read for the comparison: not resident for the whole run
        return src


def _file_mappings(files: set) -> list[tuple[int, int]]:
    """``(start, end)`` of this process's private memory mappings of ``files`` (``/proc/self/maps``;
    empty where there is none)."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[1].endswith("p") and parts[5].strip():
                    try:
                        from pathlib import Path
                        if Path(parts[5].strip()).resolve() not in files:
                            continue
                    except OSError:
                        continue
                    a, b = (int(x, 16) for x in parts[0].split("-"))
                    out.append((a, b))
    except OSError:
        return []
    return out


def _inside(w: torch.Tensor, maps: list[tuple[int, int]]) -> bool:
    """``w`` is a contiguous CPU tensor whose bytes lie wholly inside one of ``maps``."""
    if w.device.type != "cpu" or not w.is_contiguous() or not w.nbytes:
        return False
    a = w.data_ptr()
    return any(lo <= a and a + w.nbytes <= hi for lo, hi in maps)


_madvise = []


def _drop_pages(w: torch.Tensor) -> None:
    """Drop the resident pages that lie wholly inside ``w``'s bytes (a private file mapping: the
    next read pages the file in again; the pages it shares with a neighbouring tensor stay)."""
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    a = -(-w.data_ptr() // page) * page
    b = (w.data_ptr() + w.nbytes) // page * page
    if b > a:
        if not _madvise:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _madvise.append(libc.madvise)
        _madvise[0](a, b - a, CheckpointWeights.MADV_DONTNEED)


def _in_place(cfg: PTQConfig) -> bool:
    """A method chain that only rounds: :func:`quantized_variant` quantizes the model itself."""
    transforms, rounder = cfg.steps()
    return not transforms and rounder in ("rtn", "gptq")


@contextlib.contextmanager
def quantized_variant(model: torch.nn.Module, cfg: PTQConfig, calib: list[dict], hessians=None,
                      fp32: CheckpointWeights | None = None):
    """``model`` quantized with ``cfg`` inside the block, the fp32 ``model`` after it.

    A method that only rounds (``rtn``, ``gptq``: the weights are read, never written) quantizes
    ``model`` itself and its own ``nn.Linear`` modules are put back at the end: no copy of the
    model. With ``fp32`` (:meth:`CheckpointWeights.check`), each of those modules' weight is
    freed as soon as its quantized layer takes its place and read back from the checkpoint at
    the end, so the model's linear weights are held once, not twice. A method that transforms
    the model first (rotation, SmoothQuant/AWQ scaling, the block-wise reconstruction methods)
    quantizes a deep copy, dropped at the end."""
    from floatlab.ptq.modules import set_module

    from floatlab.parallel import release_memory

    if not _in_place(cfg):
        variant = copy.deepcopy(model)
        try:
            quantize_model(variant, cfg, calib=calib, hessians=hessians, keep=False, packed=True,
                           read=None if fp32 is None else fp32.drop)
            release_memory()
            yield variant
        finally:
            del variant
        return
    originals = linear_layers(model)
    released = set()

    def release(name, lin):
        fp32.release(name, lin)
        released.add(name)
    try:
        quantize_model(model, cfg, calib=calib, hessians=hessians, keep=False,    # only the model's weights
                       released=None if fp32 is None else release, packed=True,
                       read=None if fp32 is None else fp32.drop)
        release_memory()
        yield model
    finally:
        for name, lin in originals.items():
            if name in released:
                fp32.restore(name, lin)
            set_module(model, name, lin)


@contextlib.contextmanager
def _survivors_frozen():
    """Yield ``freeze()``, called after each cell's memory release: what survives a cell lives
    for the whole run (the model, the tokenizer, torch.compile's graphs and guards), and moving it
    out of the garbage collector's view (:func:`gc.freeze`) makes each later ``gc.collect`` in
    :func:`floatlab.parallel.release_memory` scan only the newer objects (0.5 s -> ~0 per call on
    MiniLM: 10 s of a default run). Unfrozen at the end; a no-op when the caller froze objects
    already (their freeze is theirs to undo)."""
    import gc

    if gc.get_freeze_count():
        yield lambda: None
        return
    try:
        yield gc.freeze
    finally:
        gc.unfreeze()


def grid_cells(opts: CompareOptions) -> list[tuple[str, str]]:
    """``(method, format)`` of every cell, methods outer: the order of ``results["rows"]``."""
    return [(m, f) for m in opts.methods for f in opts.formats]


def run_compare(lm: LoadedModel, opts: CompareOptions, *, progress=None, log=print) -> dict:
    """Quantize ``lm`` into every cell of ``opts`` (methods x formats) and measure; returns the
    results dict (with ``"environment"``: :func:`floatlab.provenance.environment`, ``"data"``:
    :func:`data_record`). Under ``torchrun`` (:mod:`floatlab.parallel`) each rank runs its share
    of the cells and rank 0 returns the merged results (other ranks: their own rows only, with
    ``"partial": True``).

    Progress is reported through :mod:`floatlab.progress` (each format's steps under its name:
    ``mxfp4 / rtn: 36/36 layers``, ``mxfp4 / evaluate``) and, if given, to ``progress(label, k, total)``
    after each evaluation batch. Raises ``ValueError`` for a bad format name or method before any
    work."""
    from floatlab import parallel
    from floatlab.provenance import environment

    t_all = time.time()
    for f in opts.formats:
        QuantSpec(f)  # fail early on a bad name
    for m in opts.methods:
        PTQConfig(weight=None, method=m, nonfinite_tokens=opts.nonfinite_tokens)
    rank, size = parallel.world()
    names = list(linear_layers(lm.model))
    calibrates = any(needs_calibration(m) for m in opts.methods)
    results = {"model": lm.name, "model_type": lm.model_type, "kind": lm.kind, "folder": str(lm.folder),
               "baseline_note": lm.baseline_note, "method": opts.method, "methods": list(opts.methods),
               "weights_only": opts.weights_only, "threads": torch.get_num_threads(), "processes": size,
               "device": str(opts.device), "nonfinite_tokens": opts.nonfinite_tokens,
               "data": data_record(opts, calibrates), "environment": environment(), "rows": []}

    def steps(label, total, unit):
        """A progress task plus the caller's callback, as one ``advance(k)``."""
        task = _progress.task("evaluate", total, unit)

        def advance(k):
            task.advance(k)
            if progress:
                progress(label, k, total)
        return task, advance

    source = opts.eval_source().source
    cells = grid_cells(opts)
    mine = parallel.my_share(len(cells), rank, size)
    # the fp32 weights come back from the checkpoint exactly: the in-place variants give theirs up
    # (read back afterwards), and every pass over the fp32 model holds one layer's mapped pages
    # at a time (CheckpointWeights.paged)
    in_place = any(_in_place(PTQConfig(weight=None, method=cells[i][0])) for i in mine)
    on_cpu = torch.device(opts.device).type == "cpu"
    fp32 = CheckpointWeights.check(lm, linear_layers(lm.model)) if in_place or on_cpu else None
    stack = contextlib.ExitStack()
    if fp32 is not None:
        stack.enter_context(fp32.paged(lm.model))
    with stack:
        return _run_cells(lm, opts, results, names, cells, mine, fp32, steps, source, t_all, progress)


def _run_cells(lm, opts, results, names, cells, mine, fp32, steps, source, t_all, progress) -> dict:
    """:func:`run_compare` after its checks: the fp32 reference, then this rank's cells."""
    from floatlab import parallel

    if lm.kind == "encoder":
        texts, n = evaluation_texts(opts)
        sq_in = _encoder_inputs(lm, texts[:opts.sqnr_texts], opts.max_length)
        mask = sq_in["attention_mask"]
        results["task"] = {"pairs": n, "texts": len(texts), "max_length": opts.max_length,
                           "source": BUILTIN_SOURCE if opts.eval_data is None else source["path"]}

        def evaluate(model, label):
            task, advance = steps(label, len(texts), "texts")
            with task:
                return metrics.embed(model, lm.tokenizer, texts, max_length=opts.max_length, progress=advance)
        t0 = time.time()
        with _progress.scope("fp32"):
            ref = evaluate(lm.model, "fp32")
        results["fp32"] = {"seconds": 0.0}
        if n:
            ref_ret, ref_ranks = metrics.retrieval_metrics(ref[:n], ref[n:])
            results["fp32"]["retrieval"] = ref_ret.to_dict()
        ref_out = metrics.layer_outputs(lm.model, names, sq_in, spill=True)   # on disk
        results["fp32"]["seconds"] = time.time() - t0
    else:
        bos = metrics.adds_bos(lm.tokenizer)
        wins = evaluation_windows(lm, opts, bos)
        sq_in = {"input_ids": wins[:2]}
        mask = None
        results["task"] = {"windows": len(wins), "window": opts.window, "tokens": int(wins.numel()), "bos": bos,
                           "source": BUILTIN_SOURCE if opts.eval_data is None else source["path"]}

        def evaluate_ppl(model, label):
            task, advance = steps(label, len(wins), "windows")
            with task:
                return metrics.perplexity(model, wins, progress=advance, bos=bos)
        t0 = time.time()
        with _progress.scope("fp32"):
            ppl = evaluate_ppl(lm.model, "fp32")
        ref_out = metrics.layer_outputs(lm.model, names, sq_in, spill=True)   # on disk
        results["fp32"] = {"perplexity": ppl, "seconds": time.time() - t0}

    t0 = time.time()
    calib = calibration_batches(lm, opts.calib, opts) if any(needs_calibration(cells[i][0]) for i in mine) else []
    results["seconds_calibration"] = time.time() - t0        # tokenizing the calibration batches
    hessians = None
    rows = []
    with _survivors_frozen() as freeze:
        for i in mine:
            method, fmt = cells[i]
            t0 = time.time()
            spec = QuantSpec(fmt)
            cfg = PTQConfig(weight=spec, act=None if opts.weights_only else spec, method=method,
                            nonfinite_tokens=opts.nonfinite_tokens)
            shared = None
            # encoders: the Hessians once for every format (one tensor per distinct input); causal
            # LMs: GPTQ collects them one block at a time for each format (BlockHessians), so that
            # at most one block's Hessians are held instead of the whole model's for the whole run
            if cfg.steps() == ((), "gptq") and lm.kind == "encoder":
                if hessians is None:      # one tensor per distinct input (q/k/v, gate/up share), kept for every format
                    from floatlab.ptq import hessians as _hessians
                    from floatlab.ptq.calibration import nonfinite_policy
                    t_h = time.time()
                    with _progress.scope("gptq hessians (shared by every format)"), nonfinite_policy(opts.nonfinite_tokens):
                        hessians = _hessians.shared_hessians(lm.model, linear_layers(lm.model), calib)
                    results["seconds_hessians"] = time.time() - t_h     # also inside this cell's seconds_quantize
                shared = hessians
            label = fmt if len(opts.methods) == 1 else f"{method} {fmt}"
            row = {"format": fmt, "method": method, "bits_per_value": spec.bits_per_value, "config": cfg.label()}
            with _progress.scope(label), quantized_variant(lm.model, cfg, calib, shared, fp32) as model:
                t_quant = time.time() - t0
                t_eval = time.time()
                if lm.kind == "encoder":
                    e = evaluate(model, label)
                    cos = metrics.cosine_to_reference(e, ref)
                    row.update({"cos_mean": cos["mean"], "cos_min": cos["min"], "cos_p05": cos["p05"]})
                    if n:
                        ret, ranks = metrics.retrieval_metrics(e[:n], e[n:])
                        d1 = metrics.paired_bootstrap_delta(ranks < 1, ref_ranks < 1)
                        row.update({"retrieval": ret.to_dict(), "recall_at_1": ret.recall_at_1,
                                    "recall_at_10": ret.recall_at_10, "delta_recall_at_1": d1[0],
                                    "delta_recall_at_1_ci": [d1[1], d1[2]],
                                    "delta_recall_at_10": ret.recall_at_10 - ref_ret.recall_at_10})
                else:
                    ppl_q = evaluate_ppl(model, label)
                    row.update({"perplexity": ppl_q, "delta_perplexity": ppl_q - results["fp32"]["perplexity"]})
                t_sq = time.time()
                sq = metrics.layer_sqnr(ref_out, model, sq_in, mask)
                t_done = time.time()
            row["layer_sqnr_db"] = sq
            finite = [v for v in sq.values() if math.isfinite(v)]
            row["min_layer_sqnr_db"] = min(finite) if finite else float("inf")
            row["seconds_quantize"] = t_quant
            row["seconds_evaluate"] = t_sq - t_eval
            row["seconds_sqnr"] = t_done - t_sq
            rows.append((i, row))
            parallel.release_memory()
            freeze()
            row["seconds"] = time.time() - t0          # also: the fp32 layers back, memory released
    del hessians
    merged = parallel.gather(rows)
    if merged is None:                       # a rank other than 0: its own rows
        results["rows"] = [r for _, r in rows]
        results["partial"] = True
    else:
        results["rows"] = [r for _, r in sorted((c for part in merged for c in part), key=lambda c: c[0])]
    results["seconds_total"] = time.time() - t_all
    return results


def compare_profile(results: dict, *, seconds_load: float | None = None) -> dict:
    """Where a :func:`run_compare` run spent its time, from the seconds it records: ``{"phases":
    [[phase, seconds], ...], "formats": [[cell, quantize s, evaluate s, SQNR s, total s], ...]}``
    (wall-clock seconds; ``seconds_load``: the caller's model loading, put first). A cell's
    ``quantize`` includes the shared GPTQ Hessians where it collected them (its first GPTQ
    cell); its ``total`` also putting the fp32 layers back and returning freed memory."""
    rows = results["rows"]
    many = len(results.get("methods", ())) > 1
    cells = [[f"{r['method']} {r['format']}" if many else r["format"], r.get("seconds_quantize", 0.0),
              r.get("seconds_evaluate", 0.0), r.get("seconds_sqnr", 0.0), r["seconds"]] for r in rows]
    phases = [] if seconds_load is None else [["load model", seconds_load]]
    phases.append(["fp32 reference (evaluate, layer outputs)", results["fp32"]["seconds"]])
    phases.append(["calibration batches", results.get("seconds_calibration", 0.0)])
    if "seconds_hessians" in results:
        phases.append(["GPTQ Hessians (shared; within the quantize below)", results["seconds_hessians"]])
    for k, name in ((1, "quantize"), (2, "evaluate"), (3, "layer SQNR")):
        phases.append([f"{name} ({len(cells)} cells)", sum(c[k] for c in cells)])
    phases.append(["other in cells (restore layers, free memory)", sum(c[4] - c[1] - c[2] - c[3] for c in cells)])
    return {"phases": phases, "formats": cells}


def measure_single(lm: LoadedModel, model, opts: CompareOptions, ref_model=None) -> dict:
    """The metric that ``floatlab ptq`` records and ``floatlab eval`` reproduces: encoders: mean
    and worst cosine to the fp32 model's embeddings (with ``ref_model``) and, on the built-in
    text, retrieval recall and an embedding digest; causal LMs: perplexity (with ``"bos"``)."""
    if lm.kind == "encoder":
        texts, n = evaluation_texts(opts)
        with _progress.task("measure", len(texts), "texts") as task:
            e = metrics.embed(model, lm.tokenizer, texts, max_length=opts.max_length, progress=task.advance)
        out = {"pairs": n} if opts.eval_data is None else {"texts": len(texts)}
        if n:
            ret, _ = metrics.retrieval_metrics(e[:n], e[n:])
            out.update({"recall_at_1": ret.recall_at_1, "recall_at_10": ret.recall_at_10})
        out["embedding_sha"] = _tensor_digest(e)
        if ref_model is not None:
            with _progress.task("measure fp32 reference", len(texts), "texts") as task:
                ref = metrics.embed(ref_model, lm.tokenizer, texts, max_length=opts.max_length, progress=task.advance)
            cos = metrics.cosine_to_reference(e, ref)
            out.update({"cos_mean": cos["mean"], "cos_min": cos["min"]})
        return out
    bos = metrics.adds_bos(lm.tokenizer)
    wins = evaluation_windows(lm, opts, bos)
    with _progress.task("measure", len(wins), "windows") as task:
        ppl = metrics.perplexity(model, wins, progress=task.advance, bos=bos)
    return {"windows": len(wins), "window": opts.window, "perplexity": ppl, **({"bos": True} if bos else {})}


def _tensor_digest(t: torch.Tensor) -> str:
    import hashlib
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


__all__ = ["CompareOptions", "run_compare", "compare_profile", "measure_single", "calibration_batches", "evaluation_windows",
           "evaluation_texts", "quantized_variant", "grid_cells", "data_record", "needs_calibration",
           "DEFAULT_FORMATS"]
