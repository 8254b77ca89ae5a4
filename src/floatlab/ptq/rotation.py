"""Hadamard rotation (QuaRot-style): rotate so that activation outliers spread over channels,
without changing what the fp32 model computes.

* Llama-family models (pre-norm RMSNorm): fold every RMSNorm weight into the linears that read
  its output (the final norm into an untied copy of the LM head), then rotate the residual stream
  by an orthonormal ``Q``: embeddings ``E <- E Q``, every reader ``W <- W Q`` (q/k/v, gate/up,
  LM head), every writer ``W <- Q^T W`` (o_proj, down_proj). RMSNorm with unit weight commutes
  with ``Q``. ``down_proj`` and ``o_proj`` get an *online* Hadamard on their input
  (``x <- x Q'``, ``W <- W Q'``), computed in every forward pass.
  Per architecture (:data:`RESIDUAL_ROTATION`): Llama, Mistral, Qwen2, Qwen3, and Gemma, whose
  RMSNorm multiplies by ``1 + weight`` (the fold uses ``1 + weight`` and leaves ``weight = 0``;
  Gemma's embedding scale ``sqrt(hidden)`` commutes with ``Q``). Each block's layout is checked
  first; a block that differs (a mixture-of-experts MLP, an extra norm) is refused with a
  ``ValueError`` naming what differs, before anything changes.
* Every other architecture gets the online rotation of every linear's input (exact for any
  model): BERT and DistilBERT (post-LayerNorm, whose mean subtraction does not commute with a
  rotation), GPT-2 and OPT (LayerNorm with a bias), Gemma 2/3 (a norm after attention and after
  the MLP, inside the residual branch), mixture-of-experts models.

``Q`` is the normalized Sylvester Hadamard matrix when the size is a power of two; otherwise a
block-diagonal matrix of Sylvester Hadamards of the largest power-of-two block dividing the size
(384 = 3 x 128, 576 = 9 x 64, 1536 = 3 x 512), times fixed pseudo-random signs (seed 0).
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn

from floatlab.models.loading import linear_layers


def hadamard(n: int, seed: int = 0) -> torch.Tensor:
    """An ``n x n`` orthonormal (block-)Hadamard matrix with random signs, float64."""
    b = n & (-n)                       # largest power of two dividing n
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < b:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    h = h / math.sqrt(b)
    q = torch.block_diag(*([h] * (n // b)))
    g = torch.Generator().manual_seed(seed + n)
    signs = torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2 - 1
    return signs[:, None] * q          # diag(signs) @ q: still orthonormal


_SHARED: "weakref.WeakValueDictionary[tuple[int, int], torch.Tensor]" = weakref.WeakValueDictionary()


def shared_hadamard(n: int, seed: int = 0) -> torch.Tensor:
    """``hadamard(n, seed)`` in float32, one tensor per ``(n, seed)`` shared by every
    :class:`OnlineRotation` that uses it (freed when none does)."""
    key = (n, seed)
    t = _SHARED.get(key)
    if t is None:
        t = hadamard(n, seed).to(torch.float32)
        _SHARED[key] = t
    return t


class OnlineRotation(nn.Module):
    """``x -> x Q`` on the last axis (``Q`` orthonormal), computed in float32.

    ``Q`` is :func:`hadamard` of the size and seed, rebuilt from them (deterministic): every
    rotation of one size shares one tensor in memory (:func:`shared_hadamard`; before, each
    ``down_proj`` held its own dense copy) and it is not part of the state dict, so a saved
    model stores only the size and seed (the input transform's description)."""

    def __init__(self, n: int, seed: int = 0):
        super().__init__()
        self.n, self.seed = n, seed
        self.register_buffer("matrix", shared_hadamard(n, seed), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) @ self.matrix).to(x.dtype)

    def extra_repr(self) -> str:
        return f"n={self.n}, seed={self.seed}"


#: model_type -> the RMSNorm of the architectures whose residual stream ``rotate`` rotates (norms
#: folded into the linears that read them): ``"weight"`` (``x * w``) or ``"one_plus_weight"``
#: (Gemma: ``x * (1 + w)``). Any other model gets online rotations on every linear's input.
RESIDUAL_ROTATION = {"llama": "weight", "mistral": "weight", "qwen2": "weight", "qwen3": "weight",
                     "gemma": "one_plus_weight"}

_ATTN, _MLP = ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj")


def is_llama_like(model: nn.Module) -> bool:
    inner = getattr(model, "model", None)
    return inner is not None and hasattr(inner, "layers") and hasattr(inner, "embed_tokens") \
        and hasattr(model, "lm_head")


def rotation_mode(model: nn.Module) -> str:
    """``"residual"`` when :func:`rotate_model` rotates the residual stream of ``model`` (its
    ``config.model_type`` is in :data:`RESIDUAL_ROTATION`), else ``"online"``."""
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    return "residual" if mtype in RESIDUAL_ROTATION else "online"


def _norm_ok(norm) -> bool:
    w = getattr(norm, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 1 and getattr(norm, "bias", None) is None


def check_residual_layout(model: nn.Module) -> None:
    """Raise ``ValueError`` naming the first part of ``model`` that differs from the layout whose
    norms :func:`rotate_model` folds (embeddings, blocks of RMSNorm -> q/k/v -> o_proj and RMSNorm
    -> gate/up -> down_proj linears, final RMSNorm, LM head), before anything is changed."""
    mtype = model.config.model_type
    head = f"rotation of {mtype!r} models folds the norms of the standard decoder layout"

    def need(ok, what):
        if not ok:
            raise ValueError(f"{head}, but {what}; this model cannot be rotated by floatlab (quantize it without "
                             "'rotate', or report the layout)")
    need(is_llama_like(model) and _norm_ok(getattr(model.model, "norm", None)),
         "it has no model.embed_tokens / model.layers / model.norm / lm_head")
    for i, blk in enumerate(model.model.layers):
        at, mlp = getattr(blk, "self_attn", None), getattr(blk, "mlp", None)
        need(at is not None and all(isinstance(getattr(at, n, None), nn.Linear) for n in _ATTN),
             f"block {i} has no self_attn.q_proj/k_proj/v_proj/o_proj linears")
        need(mlp is not None and all(isinstance(getattr(mlp, n, None), nn.Linear) for n in _MLP),
             f"block {i}'s MLP is not gate_proj/up_proj/down_proj linears (e.g. mixture-of-experts)")
        norms = [n for n, m in blk.named_children() if "norm" in n.lower()]
        need(sorted(norms) == ["input_layernorm", "post_attention_layernorm"] and
             all(_norm_ok(getattr(blk, n)) for n in norms),
             f"block {i} has the norms {norms} (expected input_layernorm and post_attention_layernorm, RMSNorm "
             "without bias)")


def _fold_norm(norm: nn.Module, linears: list[nn.Linear], one_plus: bool = False) -> None:
    """Multiply the norm's gain into the linears reading it; the norm's gain becomes 1."""
    g = norm.weight.detach().double() + (1.0 if one_plus else 0.0)
    for lin in linears:
        lin.weight.data = (lin.weight.detach().double() * g).to(lin.weight.dtype)
    norm.weight.data = torch.zeros_like(norm.weight) if one_plus else torch.ones_like(norm.weight)


def untie_lm_head(model: nn.Module) -> None:
    """Give the LM head its own weight (a copy) when it shares the embeddings'."""
    head = model.lm_head
    if head.weight is model.model.embed_tokens.weight:
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    if hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False


@torch.no_grad()
def rotate_model(model: nn.Module, seed: int = 0) -> dict[str, nn.Module]:
    """Rotate ``model`` in place; return ``{layer name: OnlineRotation}`` for the linears whose
    input must be rotated online (their weights already hold the inverse). The residual stream
    is rotated for the architectures of :data:`RESIDUAL_ROTATION` (a layout that differs raises
    ``ValueError`` before any change); every other model gets online rotations only."""
    online = {}
    layers = linear_layers(model)
    if rotation_mode(model) == "residual":
        check_residual_layout(model)
        one_plus = RESIDUAL_ROTATION[model.config.model_type] == "one_plus_weight"
        untie_lm_head(model)
        inner = model.model
        hidden = inner.embed_tokens.weight.shape[1]
        Q = hadamard(hidden, seed)
        for blk in inner.layers:
            at, mlp = blk.self_attn, blk.mlp
            _fold_norm(blk.input_layernorm, [at.q_proj, at.k_proj, at.v_proj], one_plus)
            _fold_norm(blk.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], one_plus)
            for lin in (at.q_proj, at.k_proj, at.v_proj, mlp.gate_proj, mlp.up_proj):
                lin.weight.data = (lin.weight.double() @ Q).to(lin.weight.dtype)
            for lin in (at.o_proj, mlp.down_proj):
                lin.weight.data = (Q.T @ lin.weight.double()).to(lin.weight.dtype)
                if lin.bias is not None:
                    lin.bias.data = (lin.bias.double() @ Q).to(lin.bias.dtype)
        _fold_norm(inner.norm, [model.lm_head], one_plus)
        model.lm_head.weight.data = (model.lm_head.weight.double() @ Q).to(model.lm_head.weight.dtype)
        emb = inner.embed_tokens.weight
        emb.data = (emb.double() @ Q).to(emb.dtype)
        targets = [n for n in layers if n.endswith(("mlp.down_proj", "self_attn.o_proj"))]
    else:
        targets = list(layers)
    from floatlab.progress import track

    for name in track(targets, "rotate", unit="layers", note=str):
        lin = layers[name]
        rot = OnlineRotation(lin.in_features, seed)
        lin.weight.data = (lin.weight.double() @ rot.matrix.double()).to(lin.weight.dtype)
        online[name] = rot
    return online


def attach_transforms(model: nn.Module, transforms: dict[str, nn.Module]) -> None:
    """Wrap the named linears so that their transform runs (no quantization): for checks."""
    from floatlab.ptq.modules import QuantLinear, set_module
    layers = linear_layers(model)
    for name, t in transforms.items():
        lin = layers[name]
        set_module(model, name, QuantLinear(lin, lin.weight.detach(), None, None, t))
