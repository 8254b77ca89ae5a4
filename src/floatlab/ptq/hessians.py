"""GPTQ's input Hessians, one tensor per distinct input: layers that read the same input tensor
(q/k/v, gate/up, every expert's gate/up) share one ``2/n X^T X`` instead of holding equal copies.

:func:`shared_hessians` returns the same ``{layer: Hessian}`` mapping as
:func:`floatlab.ptq.gptq.collect_hessians`, with equal values bit for bit (the same operations
in the same order), where layers of one input map to one tensor object; GPTQ clones the
Hessian it is given, so sharing is safe. ``floatlab compare`` keeps these for all its formats.

:class:`BlockHessians` gives the same Hessians one transformer block at a time, on demand, so
that GPTQ holds one block's Hessians instead of the whole model's (``floatlab ptq`` and
``floatlab compare`` on causal LMs).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from floatlab.ptq.calibration import check_finite, for_each_input

__all__ = ["shared_hessians", "hessian_bytes", "BlockHessians"]


@torch.no_grad()
def shared_hessians(model: nn.Module, layers: dict[str, nn.Linear], calib: list[dict], *,
                    nonfinite: str | None = None) -> dict[str, torch.Tensor]:
    """``{layer: 2/n X^T X}`` (float32 ``(in, in)``) over the calibration batches, padding tokens
    excluded; layers that read the same input tensor (consecutive layers given the same rows by
    :func:`floatlab.ptq.calibration.for_each_input`: q/k/v, gate/up) map to one shared tensor.

    Raises :class:`floatlab.ptq.calibration.CalibrationError` like ``collect_hessians`` (a
    NaN/Inf input names the layer; ``nonfinite="exclude"`` leaves those tokens out; products
    that overflow float32; a layer without a real token), and ``ValueError`` when layers that
    shared an input once read different inputs later (use ``collect_hessians`` then)."""
    group_of: dict[str, int] = {}
    members: list[list[str]] = []
    H: list[torch.Tensor] = []
    count: list[int] = []
    seen: dict[str, int] = {}
    state = {"x": None, "g": None, "xtx": None}

    def update(name: str, x: torch.Tensor) -> None:
        same = x is state["x"]
        g = group_of.get(name)
        if g is None:
            if same:                                   # reads the previous layer's input: its group
                g = state["g"]
            else:
                g = len(H)
                H.append(torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32))
                count.append(0)
                members.append([])
            group_of[name] = g
            members[g].append(name)
        elif same != (g == state["g"]):
            raise ValueError(f"layer {name!r} shared its input with other layers in one calibration batch and not "
                             "in another; use floatlab.ptq.gptq.collect_hessians")
        if not same:
            tot = count[g] + x.shape[0]
            H[g] *= count[g] / tot
            H[g] += (2.0 / tot) * (x.T @ x)
            count[g] = tot
        seen[name] = count[g]
        state.update(x=x, g=g)

    try:
        for_each_input(model, layers, list(calib), update, nonfinite=nonfinite)
    finally:
        state.update(x=None)
    for g, names in enumerate(members):
        if any(seen[n] != count[g] for n in names):
            raise ValueError(f"layers {names[:3]} did not read the same inputs in every calibration batch; use "
                             "floatlab.ptq.gptq.collect_hessians")
        check_finite(names[0], "GPTQ input Hessian (2/n X^T X)", H[g],
                     "Its inputs are finite but their products overflow float32 (inputs beyond ~1.8e19 in "
                     "magnitude): the model's activations at this layer are too large to calibrate on; check the "
                     "model and the calibration data.")
    return {n: H[group_of[n]] for n in layers if n in group_of}


def hessian_bytes(hessians: dict[str, torch.Tensor]) -> int:
    """Memory the Hessians hold: each distinct tensor counted once."""
    seen = {}
    for t in hessians.values():
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


class _Stop(Exception):
    pass


class _Replay(nn.Module):
    """Runs one block on its captured input ``_i`` (the hidden states of the stream and the
    block's own other arguments, as the model passed them) and keeps the output's hidden states
    as the next block's input."""

    def __init__(self, block: nn.Module, hidden: list[torch.Tensor], rest: list[tuple[tuple, dict]]):
        super().__init__()
        object.__setattr__(self, "_block", block)      # not registered: its layers keep their own names
        self._hidden, self._rest, self.out = hidden, rest, [None] * len(hidden)

    def forward(self, _i: int):
        args, kwargs = self._rest[_i]
        y = self._block(self._hidden[_i], *args, **kwargs)
        self.out[_i] = y if isinstance(y, torch.Tensor) else y[0]
        return y


class BlockHessians:
    """GPTQ's input Hessians ``{layer: 2/n X^T X}`` computed one transformer block at a time when
    first asked for, equal bit for bit to those of one pass over the whole model.

    One forward pass of the fp32 model per calibration batch records what the model hands each
    block besides its hidden states (position embeddings, masks; a key/value cache becomes
    ``None``) and the first block's input, and stops after the last block that holds a needed
    layer (no LM head). Asking for a layer of block ``i`` runs blocks up to ``i`` on the stream of
    hidden states (each block on what the block before it returned: the fp32 model's own
    activations, the same operations on the same inputs as in the whole model) and collects
    that block's Hessians with ``collect(block_view, block_layers, batches)`` (the whole-model
    collector, e.g. :func:`shared_hessians`). A block's Hessians are computed before any of its
    layers is used, so a caller may quantize each layer in place once its Hessian is taken (the
    stream has moved past that block already); deleting an entry (``del H[name]``) frees it.

    :meth:`build` returns ``None`` where this does not apply (then collect over the whole model):
    no list of transformer blocks, a needed layer outside the blocks, calibration batches with an
    ``attention_mask`` (padding rows are chosen by the model-level mask), or blocks not called
    exactly once per batch with their hidden states first.
    """

    def __init__(self, blocks, block_of: dict[str, int], layers: dict[str, nn.Module], hidden, rest,
                 collect: Callable):
        self._blocks, self._block_of, self._layers = blocks, block_of, layers
        self._hidden, self._rest, self._collect = hidden, rest, collect
        self._next, self._H = 0, {}

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, layers: dict[str, nn.Module], calib: list[dict], collect: Callable,
              need=None) -> "BlockHessians | None":
        from floatlab.models.loading import block_list

        need = list(layers) if need is None else [n for n in layers if n in set(need)]
        calib = list(calib)
        if not need or not calib or any(b.get("attention_mask") is not None for b in calib):
            return None
        found = block_list(model)
        if found is None:
            return None
        prefix, blocks = found
        block_of = {}
        for name in need:
            head, _, tail = name[len(prefix) + 1:].partition(".") if name.startswith(prefix + ".") else ("", "", "")
            if not head.isdigit() or not tail or int(head) >= len(blocks):
                return None
            block_of[name] = int(head)
        last = max(block_of.values())
        try:
            from transformers.cache_utils import Cache
        except ImportError:                  # pragma: no cover - the models come from transformers
            Cache = ()
        calls = [[] for _ in range(last + 1)]
        hidden = []

        def pre(i):
            def fn(mod, args, kwargs):
                if not args or not isinstance(args[0], torch.Tensor):
                    raise _Stop
                if i == 0:
                    hidden.append(args[0])
                calls[i].append((tuple(args[1:]), {k: (None if isinstance(v, Cache) else v) for k, v in kwargs.items()}))
            return fn

        def stop(mod, args, out):
            raise _Stop
        handles = [blocks[i].register_forward_pre_hook(pre(i), with_kwargs=True) for i in range(last + 1)]
        handles.append(blocks[last].register_forward_hook(stop))
        try:
            for k, batch in enumerate(calib):
                try:
                    model(**batch)
                except _Stop:
                    pass
                if any(len(c) != k + 1 for c in calls) or len(hidden) != k + 1:
                    return None
        finally:
            for h in handles:
                h.remove()
        out = cls(blocks, block_of, {n: layers[n] for n in need}, hidden, calls, collect)
        return out

    def __contains__(self, name) -> bool:
        return name in self._block_of

    def __getitem__(self, name: str) -> torch.Tensor:
        i = self._block_of[name]
        while self._next <= i:
            self._advance()
        return self._H[name]

    def __delitem__(self, name: str) -> None:
        del self._H[name]

    @torch.no_grad()
    def _advance(self) -> None:
        from floatlab import progress as _progress

        i = self._next
        replay = _Replay(self._blocks[i], self._hidden, self._rest[i])
        mine = {n: l for n, l in self._layers.items() if self._block_of[n] == i}
        for n in mine:                            # the caller may swap these layers out and free them
            del self._layers[n]
        batches = [{"_i": k} for k in range(len(self._hidden))]
        with _progress.reporting(None):           # one silent calibration pass per block
            if mine:
                self._H.update(self._collect(replay, mine, batches))
            else:
                for b in batches:
                    replay(**b)
        self._hidden = replay.out
        self._rest[i] = None
        self._next += 1
