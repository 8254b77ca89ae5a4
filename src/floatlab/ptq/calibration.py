"""Calibration helpers shared by the methods that look at layer inputs (GPTQ, SmoothQuant, AWQ),
and the checks that keep non-finite numbers out of every PTQ statistic.

Every statistic a method gathers from calibration data passes through :func:`for_each_input`
(the shared calibration pass) or, for a method that captures inputs its own way, through
:func:`finite_rows`. Either one refuses a NaN/Inf in a layer's real-token input with a
:class:`CalibrationError` that names the layer, says where the value is and what to do; or, when
the policy is ``"exclude"`` (``PTQConfig(nonfinite_tokens="exclude")``), leaves the tokens whose
input row to that layer holds a NaN/Inf out of that layer's statistics. A pass in which a layer
receives no real token at all (every attention-mask entry 0, every token excluded) is refused
too. :func:`check_finite` guards a statistic computed from finite inputs that still overflowed
(``x^T x`` of inputs above ~1.8e19), :func:`check_parameters` a model's weights.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from floatlab.text import plural

#: what to do with a calibration token whose input row to a layer holds a NaN or Inf
NONFINITE_POLICIES = ("error", "exclude")

_POLICY: contextvars.ContextVar[str] = contextvars.ContextVar("floatlab_ptq_nonfinite", default="error")

_FIX = ("check the calibration data and run the model in float32 (a float16/bfloat16 model can "
        "overflow), or set PTQConfig(nonfinite_tokens='exclude') to leave such tokens out of each "
        "layer's statistics")


class CalibrationError(ValueError):
    """Calibration data or a statistic gathered from it that PTQ cannot use: a NaN/Inf in a
    layer's input or statistic, no real tokens, or a non-finite model parameter."""


def _check_policy(policy: str) -> str:
    if policy not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite_tokens must be one of {NONFINITE_POLICIES}, got {policy!r}")
    return policy


@contextlib.contextmanager
def nonfinite_policy(policy: str) -> Iterator[None]:
    """Within the block, calibration passes that are not given a policy use ``policy``
    (``"error"`` or ``"exclude"``). :func:`floatlab.ptq.apply.quantize_model` sets its config's
    ``nonfinite_tokens`` this way, so every method it runs (and any new one that calls
    :func:`for_each_input` or :func:`finite_rows`) follows it without extra arguments."""
    token = _POLICY.set(_check_policy(policy))
    try:
        yield
    finally:
        _POLICY.reset(token)


def current_policy() -> str:
    """The non-finite policy in effect (``"error"`` unless :func:`nonfinite_policy` set one)."""
    return _POLICY.get()


def token_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A layer input as float32 rows ``(tokens, features)``, padding tokens dropped.

    ``mask`` is the batch's attention mask ``(batch, seq)``; it is used when ``x`` is
    ``(batch, seq, features)`` with the same leading shape.
    """
    x = x.detach().to(torch.float32)
    if mask is not None and x.dim() == 3 and mask.shape == x.shape[:2]:
        x = x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of the floating-point tensor ``t`` is finite (True when empty).

    One vectorized sum, which any NaN or +-Inf makes non-finite (Inf + finite = Inf, Inf - Inf
    and NaN + anything = NaN), so a finite sum proves every value finite; only where the sum
    overflowed (huge finite values) does ``torch.isfinite`` decide. About 20x faster than
    ``isfinite(t).all()`` on CPU (which writes a bool tensor): checking MiniLM's 22.7M parameters
    and every quantized weight cost ``floatlab compare`` ~2 s."""
    if t.numel() == 0:
        return True
    t = t.detach()
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def _count(t: torch.Tensor) -> str:
    n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    return ", ".join(p for p in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} Inf" if n_inf else "") if p)


def _dtype_hint(dtype: torch.dtype | None) -> str:
    if dtype in (torch.float16, torch.bfloat16):
        return (f" The layer computes in {str(dtype).replace('torch.', '')}, whose range is easily exceeded: "
                "load the model in float32 for calibration.")
    if dtype == torch.float64:
        return " The layer computes in float64; its input exceeds float32's range (3.4e38), where statistics are kept."
    return ""


def finite_rows(layer: str, rows: torch.Tensor, policy: str | None = None, *,
                where: str | Callable[[], str] = "", dtype: torch.dtype | None = None) -> torch.Tensor:
    """Check one layer's calibration input rows ``(tokens, features)`` for NaN/Inf.

    Returns ``rows`` unchanged when every value is finite. Otherwise, with ``policy="error"``
    (the default, or the one :func:`nonfinite_policy` set) raises :class:`CalibrationError`
    naming ``layer``, how many values and tokens are non-finite, ``where`` (e.g. the calibration
    batch and position; a callable is called only for the message) and the fix; with
    ``"exclude"`` returns the rows without the tokens that hold a NaN/Inf (possibly none).
    ``dtype``: the dtype the layer computes in (for the message). Any method that gathers
    statistics from layer inputs calls this (the shared pass :func:`for_each_input` does it
    for its callers).
    """
    if all_finite(rows):
        return rows
    ok = torch.isfinite(rows).all(dim=-1)
    if _check_policy(policy or current_policy()) == "exclude":
        return rows[ok]
    bad = int((~ok).sum())
    where = where() if callable(where) else where
    raise CalibrationError(
        f"layer {layer!r}: its calibration input has non-finite values ({_count(rows)} in {bad} of "
        f"{rows.shape[0]} real tokens{'; first at ' + where if where else ''}). PTQ statistics of this layer "
        f"(GPTQ Hessian, SmoothQuant/AWQ maxima and means) would be NaN/Inf; this is not a damping or "
        f"quantizer problem: the non-finite values come from the calibration inputs or the model's own "
        f"forward pass, and this is the first calibrated layer that saw them.{_dtype_hint(dtype)} To fix: {_FIX}.")


def check_finite(layer: str, what: str, t: torch.Tensor, hint: str = "") -> torch.Tensor:
    """Raise :class:`CalibrationError` naming ``layer`` and ``what`` (e.g. "GPTQ input
    Hessian") when the statistic ``t`` holds a NaN/Inf; ``hint`` says the likely cause and fix.
    Returns ``t``."""
    if not all_finite(t):
        raise CalibrationError(f"layer {layer!r}: its {what} has non-finite values ({_count(t)}). "
                               f"{hint or 'To fix: ' + _FIX + '.'}")
    return t


def check_parameters(model: nn.Module, after: str | None = None, *, each=None) -> None:
    """Raise :class:`CalibrationError` naming the first floating-point parameter of ``model`` that
    holds a NaN/Inf (the count and the first index), before quantization or ``after`` a
    transform step (e.g. ``"rotate"``). ``each(p)``: called with every parameter once it is
    checked (``floatlab compare`` drops its checkpoint-mapped pages then)."""
    for name, p in model.named_parameters():
        if not p.is_floating_point() or all_finite(p):
            if each is not None:
                each(p)
            continue
        first = tuple(int(i) for i in torch.nonzero(~torch.isfinite(p.detach()))[0])
        if after is None:
            cause = ("before quantization: the checkpoint is corrupt or was loaded or converted wrongly (e.g. an "
                     "overflow when cast to float16). Reload or repair the model; PTQ would only spread these "
                     "values (into calibration statistics, the quantized weights and every output)")
        else:
            cause = (f"after the {after!r} step, which scaled or rotated it beyond float32's range: its values "
                     "or the calibration statistics behind them are too large for this step (try another method, "
                     "or a smaller smooth_alpha for smoothquant)")
        raise CalibrationError(f"parameter {name!r} ({tuple(p.shape)}) has non-finite values ({_count(p.detach())}; "
                               f"first at index {first}) {cause}.")


def _where(x: torch.Tensor, mask: torch.Tensor | None, batch: int) -> str:
    """The calibration batch and (sequence, position) of the first real token of ``x`` with a NaN/Inf."""
    if x.dim() != 3:
        return f"calibration batch {batch}"
    bad = ~torch.isfinite(x.detach()).all(dim=-1)
    if mask is not None and mask.shape == bad.shape:
        bad &= mask.bool()
    idx = torch.nonzero(bad)
    if len(idx) == 0:        # the float32 conversion overflowed a float64 input
        return f"calibration batch {batch}"
    return f"calibration batch {batch}, sequence {int(idx[0, 0])}, position {int(idx[0, 1])}"


@torch.no_grad()
def for_each_input(model: nn.Module, layers: dict[str, nn.Linear], calib: list[dict],
                   update: Callable[[str, torch.Tensor], None], *, nonfinite: str | None = None) -> dict[str, int]:
    """Run the calibration batches through ``model`` and call ``update(name, rows)`` with the
    real-token input rows ``(tokens, in_features)``, float32, of every layer in ``layers`` (hooks
    are removed afterwards). Layers that read the same input tensor (q/k/v, gate/up) receive the
    same ``rows`` object, so an ``update`` may reuse work by identity. Returns the number of
    tokens each layer received.

    Every layer's rows go through :func:`finite_rows` with ``nonfinite`` (``None``: the policy
    in effect, see :func:`nonfinite_policy`): a NaN/Inf raises :class:`CalibrationError` naming
    the first layer that saw it, or (``"exclude"``) its tokens are left out of that layer's rows
    and a warning gives the counts. ``update`` is never called with zero rows. Raises
    :class:`CalibrationError` when a layer receives no real token (an empty calibration set,
    every attention-mask entry 0, every token excluded).
    """
    policy = _check_policy(nonfinite or current_policy())
    calib = list(calib)
    state = {"mask": None, "input": None, "rows": None, "batch": 0}
    tokens = {n: 0 for n in layers}
    dropped = {n: 0 for n in layers}

    def hook(name: str):
        def fn(mod, args):
            x = args[0]
            if state["input"] is not x:       # layers reading one tensor get one rows object
                rows = token_rows(x, state["mask"])
                kept = finite_rows(name, rows, policy, dtype=x.dtype,
                                   where=lambda: _where(x, state["mask"], state["batch"]))
                state["input"], state["rows"], state["dropped"] = x, kept, rows.shape[0] - kept.shape[0]
            dropped[name] += state["dropped"]
            if state["rows"].shape[0]:
                tokens[name] += state["rows"].shape[0]
                update(name, state["rows"])
        return fn

    handles = [layer.register_forward_pre_hook(hook(n)) for n, layer in layers.items()]
    try:
        from floatlab.progress import track

        for i, batch in enumerate(track(calib, "calibration pass", unit="batches")):
            state.update(mask=batch.get("attention_mask"), batch=i)
            model(**batch)
    finally:
        state.update(input=None, rows=None)
        for h in handles:
            h.remove()
    if layers and not any(tokens.values()) and not any(dropped.values()):
        raise CalibrationError(
            f"the calibration set has no real tokens ({len(calib)} batches; every attention_mask entry is 0, or "
            "the batches are empty): the methods that calibrate (GPTQ, SmoothQuant, AWQ) need at least one "
            "token; pass non-empty calibration texts (CLI: --calib N with N > 0)")
    for name, n in tokens.items():
        if n == 0:
            why = (f"all {dropped[name]} of its tokens had non-finite inputs and were excluded" if dropped[name]
                   else "it did not run during the calibration forward passes")
            raise CalibrationError(f"layer {name!r} received no calibration tokens ({why}): no statistic can be "
                                   "gathered for it; check the calibration data and the model")
    if any(dropped.values()):
        hit = {n: d for n, d in dropped.items() if d}
        first = next(iter(hit))
        warnings.warn(f"calibration: tokens with non-finite inputs excluded at {plural(len(hit), 'layer')} (first {first!r}: "
                      f"{hit[first]} of {hit[first] + tokens[first]} tokens); nonfinite_tokens='exclude'",
                      RuntimeWarning, stacklevel=3)
    return tokens
