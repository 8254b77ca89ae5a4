"""Make every GEMM weight of a Hugging Face model an ``nn.Linear``, so that PTQ sees all of them.

Two layouts in ``transformers`` hold GEMM weights outside ``nn.Linear``:

* **GPT-2's** ``Conv1D`` (also used by a few other models): ``y = x W + b`` with ``W`` stored as
  ``(in, out)``. :func:`linearize` replaces it by an ``nn.Linear`` whose weight is the *transposed
  view* of the same storage: the values are the checkpoint's, bit for bit, and ``F.linear`` then
  computes ``x @ W`` with the very matrix ``Conv1D`` multiplies (its outputs are equal bit for bit;
  tested).
* **Mixture-of-experts** layers: ``transformers`` >= 5 stores the experts of Mixtral, Qwen2-MoE,
  Qwen3-MoE, ... as fused 3-D parameters (``gate_up_proj (experts, 2 * inter, hidden)``,
  ``down_proj (experts, hidden, inter)``). :func:`linearize` replaces such a module by
  :class:`LinearExperts`: per expert an MLP of three ``nn.Linear`` (``gate_proj``, ``up_proj``,
  ``down_proj``, the names of the original per-expert checkpoints), computing the same routed sum.
  It handles the layout ``transformers`` calls concatenated, not transposed, without biases, with
  the default gate (``act(gate) * up``); any other layout is refused with a :class:`ModelError`
  naming the class and what differs. Each converted module is checked on one token per expert
  against the original (relative difference <= 1e-5), so a layout floatlab misreads cannot pass.
  Older ``transformers`` versions (per-expert ``nn.Linear`` modules already) need nothing.

The routers (``mlp.gate``, ``shared_expert_gate``) are not experts; :func:`floatlab.models.linear_layers`
leaves them in fp32 like the LM head.
"""

from __future__ import annotations

import torch
from torch import nn

from floatlab.models.registry import ModelError


class ExpertMLP(nn.Module):
    """One expert: ``down_proj(act(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, gate_proj: nn.Linear, up_proj: nn.Linear, down_proj: nn.Linear, act_fn):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LinearExperts(nn.ModuleList):
    """A fused experts module as a list of :class:`ExpertMLP` (``experts.E.gate_proj``, ...).

    ``forward(hidden_states (tokens, hidden), top_k_index (tokens, k), top_k_weights (tokens, k))``
    returns ``(tokens, hidden)``: the sum over each token's chosen experts of the routing weight
    times the expert's output, accumulated per expert in expert order (``transformers``' eager
    loop)."""

    def __init__(self, experts: list[ExpertMLP]):
        super().__init__(experts)
        self.num_experts = len(experts)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit:
            e = int(e[0])
            if e == self.num_experts:
                continue
            pos, tok = torch.where(mask[e])
            y = self[e](hidden_states[tok]) * top_k_weights[tok, pos, None]
            out.index_add_(0, tok, y.to(out.dtype))
        return out


def _is_fused_experts(mod: nn.Module) -> bool:
    p = dict(mod.named_parameters(recurse=False))
    return any(isinstance(v, torch.Tensor) and v.dim() == 3 for v in p.values()) and (
        "down_proj" in p or "gate_up_proj" in p or "up_proj" in p)


def _refuse(name: str, mod: nn.Module, why: str) -> ModelError:
    return ModelError(f"mixture-of-experts layer {name!r} ({type(mod).__name__}) stores its experts as fused 3-D "
                      f"weights in a layout floatlab cannot split into per-expert linear layers: {why}. Supported: "
                      "gate_up_proj (experts, 2*inter, hidden) [gate; up] concatenated, down_proj (experts, hidden, "
                      "inter), no biases, act(gate) * up")


def _split_experts(name: str, mod: nn.Module) -> LinearExperts:
    from transformers.integrations import moe as hf_moe

    p = dict(mod.named_parameters(recurse=False))
    flags = {k: getattr(mod, k, d) for k, d in (("has_gate", True), ("has_bias", False), ("is_transposed", False),
                                                ("is_concatenated", True), ("has_post_expert_norm", False))}
    bad = [f"{k}={v}" for k, v, ok in ((k, v, v == d) for k, v, d in
                                       zip(flags, flags.values(), (True, False, False, True, False))) if not ok]
    if bad:
        raise _refuse(name, mod, ", ".join(bad))
    if set(p) != {"gate_up_proj", "down_proj"}:
        raise _refuse(name, mod, f"its parameters are {sorted(p)}")
    gate_fn = getattr(type(mod), "_apply_gate", hf_moe._default_apply_gate)
    if gate_fn is not hf_moe._default_apply_gate:
        raise _refuse(name, mod, "it has its own gate function (_apply_gate)")
    gu, down = p["gate_up_proj"], p["down_proj"]
    n, two_i, hidden = gu.shape
    if two_i % 2 or tuple(down.shape) != (n, hidden, two_i // 2):
        raise _refuse(name, mod, f"gate_up_proj {tuple(gu.shape)} and down_proj {tuple(down.shape)} do not match")
    inter = two_i // 2
    act = mod.act_fn
    experts = []
    for e in range(n):
        lins = []
        for w in (gu[e, :inter], gu[e, inter:], down[e]):
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
            lin.weight = nn.Parameter(w.detach(), requires_grad=False)      # a view of the fused weight
            lins.append(lin)
        experts.append(ExpertMLP(*lins, act))
    new = LinearExperts(experts)
    if gu.device.type != "meta":
        _check_same(name, mod, new, hidden, n, gu)
    return new


@torch.no_grad()
def _check_same(name: str, old: nn.Module, new: LinearExperts, hidden: int, n: int, like: torch.Tensor) -> None:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, hidden, generator=g).to(device=like.device, dtype=like.dtype)
    idx = torch.arange(n, device=like.device)[:, None]
    w = torch.ones(n, 1, device=like.device, dtype=like.dtype)
    a, b = old(x, idx, w), new(x, idx, w)
    err = float((a.float() - b.float()).abs().max() / a.float().abs().max().clamp(min=1e-30))
    if not err <= 1e-5:
        raise _refuse(name, old, f"its own forward differs from the split experts' (relative {err:.2e}); it is "
                      "not the standard routed sum")


def linearize(model: nn.Module) -> dict[str, str]:
    """Replace, in place, every ``Conv1D`` by an equal ``nn.Linear`` and every fused experts module
    by :class:`LinearExperts` (see the module docstring). Returns ``{module name: what it was}``
    (e.g. ``{"transformer.h.0.attn.c_attn": "Conv1D"}``), empty when the model already holds only
    ``nn.Linear`` GEMMs. Raises :class:`ModelError` for a fused experts layout it cannot split.
    Idempotent."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:          # no transformers: nothing of its kinds can be in the model
        return {}
    done = {}
    for name, mod in list(model.named_modules()):
        if isinstance(mod, Conv1D):
            w = mod.weight                                     # (in, out)
            lin = nn.Linear(w.shape[0], w.shape[1], bias=mod.bias is not None, device="meta")
            lin.weight = nn.Parameter(w.detach().t(), requires_grad=w.requires_grad)   # a view: same values
            if mod.bias is not None:
                lin.bias = mod.bias
            _set_module(model, name, lin)
            done[name] = "Conv1D"
        elif _is_fused_experts(mod):
            _set_module(model, name, _split_experts(name, mod))
            done[name] = type(mod).__name__
    return done


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def unlinearized(model: nn.Module) -> list[str]:
    """Names of the modules :func:`linearize` would convert (``Conv1D``, fused experts)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return []
    return [n for n, m in model.named_modules() if isinstance(m, Conv1D) or _is_fused_experts(m)]
