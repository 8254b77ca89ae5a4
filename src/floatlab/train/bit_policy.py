"""Per-layer weight bit-width policies for the image CNN, searched under a compression budget
(issue 15 item 4, after MetaQuantNet: Wang, Wang, Xu and Xue 2020, "Automatic low-bit hybrid
quantization of neural networks through meta learning", arXiv 2004.11506).

The pipeline, and how it differs from the paper:

1. **One set of shared weights trained once over random policies** (the paper trains a
   *MetaQuantNet*, a meta network that generates the target's quantized weights from an encoding of
   the policy). Here the generator is the weight quantizer itself applied to shared latent float32
   weights: every training step draws a random policy (each layer's bit width uniformly from
   ``BIT_OPTIONS``) and takes one Adam step of quantization-aware training through it (a
   weight-sharing "supernet"; no meta network is learned: a simplification, stated as such).
2. **A genetic search** (:func:`floatlab.search.genetic_search`) over policies whose weight bits
   fit the budget (checked before a candidate is scored, so none over budget is ever scored or
   returned), started from the uniform policy of that budget. A candidate's score is the accuracy
   of the shared weights quantized by it on held-out images, after **batch-norm recalibration**
   (running statistics re-estimated on ``calib_batches`` training batches), as in the paper.
3. **Real training** of the winner and of the uniform policy of the same budget, each from scratch
   with the same preset and seeds (:func:`policy_recipe` gives the recipe; ``floatlab train
   --recipe FILE`` trains a saved one), evaluated on the test set (the paper retrains or
   fine-tunes the winner; retraining both from scratch compares the policies, not the starts).

Bit widths and quantizers (weights only; inputs, gradients and batch norms stay float32, so the
compression is the weights' storage): 1 bit ``binary`` ``{-a, +a}`` and 2 bits ``ternary``
``{-a, 0, +a}`` (``a`` per output channel, :mod:`floatlab.nn.lowbit`; ternary stored in 2 bits),
3-8 bits the symmetric integer formats ``int3``..``int8`` with current per-tensor power-of-two
scaling (the ``int8`` recipe's weight quantizer); straight-through gradients. Cost of a policy:
``sum(bits_l * weights_l)`` over the conv and linear weights (biases, 74 float32 values on the
small CNN, are not counted). The budget ``--budget-bits b`` is the cost of the uniform ``b``-bit
policy.

Run (the numbers in docs/images.md)::

    OMP_NUM_THREADS=1 python -m floatlab.train.bit_policy --budget-bits 2 --out runs/policy_b2

Held-out images are training images ``--val-start`` (50,000) to ``--val-start + --val`` (2,000);
training uses the preset's first images, never past ``--val-start``. ``--task digits --preset
smoke`` runs the whole pipeline on scikit-learn's 8x8 digits in seconds (the CI test).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from floatlab.nn.functional import QuantState
from floatlab.nn.modules import QUANTIZED_MODULES
from floatlab.nn.recipe import GemmSpec, LinearSpec, Recipe, Rule, Scaling, TensorSpec
from floatlab.search.genetic import budget_constraint, genetic_search
from floatlab.train.images import ImageData
from floatlab.train.vision import ImageModelConfig, build_model

BIT_OPTIONS = (1, 2, 3, 4, 5, 6, 8)


def weight_format(bits: int) -> str:
    """The weight quantizer of a bit width: ``binary`` (1), ``ternary`` (2), ``int{bits}`` (3-8).
    Raises ``ValueError`` for another width."""
    if bits not in BIT_OPTIONS:
        raise ValueError(f"bit width {bits!r} is not one of {BIT_OPTIONS}")
    return {1: "binary", 2: "ternary"}.get(bits, f"int{bits}")


def weight_spec(bits: int) -> LinearSpec:
    """Weights quantized to ``bits`` in fprop and dgrad (straight-through gradient); the input, the
    gradients and the wgrad GEMM in float32."""
    fmt = weight_format(bits)
    w = TensorSpec(fmt) if bits <= 2 else TensorSpec(fmt, None, True, "contraction", Scaling.CURRENT)
    return LinearSpec(GemmSpec(TensorSpec(), w), GemmSpec(TensorSpec(), w), GemmSpec(TensorSpec(), TensorSpec()))


def layer_sizes(model: nn.Module) -> dict[str, int]:
    """Qualified name -> weight count of every ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` (and their
    quantized versions), in ``named_modules()`` order."""
    return {n: m.weight.numel() for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}


def policy_cost(sizes: dict[str, int], policy) -> int:
    """Weight bits of ``policy`` (one bit width per layer of ``sizes``, in its order)."""
    if len(policy) != len(sizes):
        raise ValueError(f"a policy needs one bit width per layer ({len(sizes)}), got {len(policy)}")
    return sum(int(b) * n for b, n in zip(policy, sizes.values()))


def policy_name(sizes: dict[str, int], policy) -> str:
    return "w" + "-".join(str(b) for b in policy)


def policy_recipe(sizes: dict[str, int], policy, name: str | None = None) -> Recipe:
    """The recipe that quantizes each layer's weights to its bit width (:func:`weight_spec`);
    nothing is kept by name. Raises ``ValueError`` for a wrong length or width."""
    if len(policy) != len(sizes):
        raise ValueError(f"a policy needs one bit width per layer ({len(sizes)}), got {len(policy)}")
    rules = tuple(Rule(n, weight_spec(int(b))) for n, b in zip(sizes, policy))
    return Recipe(name or policy_name(sizes, policy), LinearSpec(), rules=rules, keep=(),
                  description="weights per layer: " + ", ".join(f"{n} {weight_format(int(b))}"
                                                                 for n, b in zip(sizes, policy)))


class SharedWeights:
    """The CNN with one set of latent weights whose quantizer per layer can be switched
    (:meth:`set_policy`) without copying anything: one prepared ``QuantState`` per layer and bit
    width."""

    def __init__(self, cfg: ImageModelConfig, seed: int = 0) -> None:
        from floatlab.nn.patch import quantize_model
        import warnings
        torch.manual_seed(seed)
        self.model = build_model(cfg)
        self.sizes = layer_sizes(self.model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            quantize_model(self.model, policy_recipe(self.sizes, (8,) * len(self.sizes)).replace(seed=seed))
        mods = dict(self.model.named_modules())
        self.layers = {n: mods[n] for n in self.sizes}
        assert all(isinstance(m, QUANTIZED_MODULES) for m in self.layers.values())
        self.states = {n: {b: QuantState(weight_spec(b), seed=m.seed, name=n) for b in BIT_OPTIONS}
                       for n, m in self.layers.items()}

    def set_policy(self, policy) -> None:
        if len(policy) != len(self.layers):
            raise ValueError(f"a policy needs one bit width per layer ({len(self.layers)}), got {len(policy)}")
        for (n, m), b in zip(self.layers.items(), policy):
            m.qstate = self.states[n][int(b)]
            m.spec = m.qstate.spec


def train_shared(shared: SharedWeights, data: ImageData, steps: int, batch: int, lr: float, seed: int,
                 log=None) -> list[float]:
    """Adam on the shared latent weights, one random policy per step (uniform per layer over
    ``BIT_OPTIONS``, drawn from ``random.Random(seed)``). Returns the training losses."""
    rng = random.Random(seed)
    opt = torch.optim.Adam(shared.model.parameters(), lr=lr)
    shared.model.train()
    losses = []
    for step in range(steps):
        shared.set_policy(tuple(rng.choice(BIT_OPTIONS) for _ in shared.sizes))
        x, y = data.batch(step, batch, seed)
        loss = F.cross_entropy(shared.model(data.normalize(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log and (step + 1) % 100 == 0:
            log(f"shared weights: step {step + 1}/{steps}, mean loss of the last 100 {sum(losses[-100:]) / 100:.3f}")
    return losses


@torch.no_grad()
def score_policy(shared: SharedWeights, policy, data: ImageData, val: tuple[torch.Tensor, torch.Tensor],
                 calib_batches: int = 4, batch: int = 128) -> float:
    """Accuracy on ``val`` (images ``(N, 1, H, W)`` in [0, 1], labels ``(N,)``) of the shared weights
    quantized by ``policy``, after re-estimating every batch norm's running statistics on the first
    ``calib_batches`` training batches (the same batches for every policy). The model's batch-norm
    statistics are restored afterwards."""
    model = shared.model
    shared.set_policy(policy)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(copy.deepcopy(m.state_dict()), m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                       # cumulative average over the calibration batches
    model.train()
    for i in range(calib_batches):
        x, _ = data.batch(i, batch, 12345)
        model(data.normalize(x))
    model.eval()
    correct = 0
    for i in range(0, len(val[1]), 1000):
        correct += int((model(data.normalize(val[0][i:i + 1000])).argmax(1) == val[1][i:i + 1000]).sum())
    for m, (state, momentum) in zip(bns, saved):
        m.load_state_dict(state)
        m.momentum = momentum
    model.train()
    return correct / len(val[1])


@dataclass
class PolicySearch:
    """What :func:`search_policy` found: ``policy`` (bit width per layer of ``layers``), its proxy
    ``score`` and the uniform policy's, their costs, the ``budget`` (bits), the search ``history``
    (best score per generation) and every scored candidate."""

    layers: dict[str, int]
    budget: int
    policy: tuple
    score: float
    uniform: tuple
    uniform_score: float
    cost: int
    history: list[float] = field(default_factory=list)
    scored: dict = field(default_factory=dict)
    rejected: int = 0

    def to_dict(self) -> dict:
        return {"layers": self.layers, "budget_bits": self.budget, "policy": list(self.policy),
                "proxy_score": self.score, "uniform": list(self.uniform), "uniform_proxy_score": self.uniform_score,
                "cost_bits": self.cost, "uniform_cost_bits": policy_cost(self.layers, self.uniform),
                "history": self.history, "candidates_scored": len(self.scored), "rejected": self.rejected,
                "scored": [{"policy": list(k), "proxy_score": v} for k, v in sorted(self.scored.items(), key=lambda kv: -kv[1])]}


def search_policy(score, sizes: dict[str, int], budget_bits: int, *, population: int = 16, parents: int = 4,
                  generations: int = 8, mutation: float = 0.25, seed: int = 0) -> PolicySearch:
    """Genetic search over ``BIT_OPTIONS`` per layer of ``sizes`` for the best ``score(policy)``
    under a budget of ``budget_bits`` uniform bits per weight (cost of the uniform policy), started
    from that uniform policy. ``score`` is any callable (the proxy accuracy in :func:`main`).
    Raises ``ValueError`` if ``budget_bits`` is not a bit option."""
    if budget_bits not in BIT_OPTIONS:
        raise ValueError(f"--budget-bits must be one of {BIT_OPTIONS}, got {budget_bits!r}")
    uniform = (budget_bits,) * len(sizes)
    budget = policy_cost(sizes, uniform)
    if budget_bits == min(BIT_OPTIONS):        # the uniform policy is the only one that fits
        s = float(score(uniform))
        return PolicySearch(dict(sizes), budget, uniform, s, uniform, s, budget, [], {uniform: s}, 0)
    costs = [{b: b * n for b in BIT_OPTIONS} for n in sizes.values()]
    r = genetic_search([BIT_OPTIONS] * len(sizes), score, constraint=budget_constraint(costs, budget),
                       population=population, parents=parents, mutation=mutation, generations=generations,
                       initial=[uniform], seed=seed)
    return PolicySearch(dict(sizes), budget, r.best, r.score, uniform, r.scores[uniform],
                        policy_cost(sizes, r.best), r.history, r.scores, r.rejected)


def main(argv=None) -> dict:
    from floatlab.train.image_run import get_image_preset, train_image_run
    from floatlab.train.images import load_digits, load_fashion_mnist

    ap = argparse.ArgumentParser(prog="python -m floatlab.train.bit_policy",
                                 description="Search a per-layer weight bit policy for the Fashion-MNIST CNN under "
                                             "the budget of a uniform bit width, then train it and the uniform policy.")
    ap.add_argument("--budget-bits", type=int, default=2, help=f"one of {BIT_OPTIONS}")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--shared-steps", type=int, default=800, help="steps of the shared-weight training")
    ap.add_argument("--task", default="fashion-mnist", choices=("fashion-mnist", "digits"),
                    help="digits: scikit-learn's 8x8 digits (a CI-sized run)")
    ap.add_argument("--val-start", type=int, default=50000,
                    help="held-out images: training images from this index on (training uses those before it)")
    ap.add_argument("--val", type=int, default=2000, help="how many held-out training images score a policy")
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the real training of both policies (0: none)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.budget_bits not in BIT_OPTIONS:
        ap.error(f"--budget-bits must be one of {BIT_OPTIONS}, got {a.budget_bits}")
    torch.set_num_threads(1)
    preset = get_image_preset(a.preset)
    full = load_fashion_mnist() if a.task == "fashion-mnist" else load_digits()
    n = len(full.train_y)
    if not 0 < a.val_start < n or a.val < 1 or a.val_start + a.val > n:
        ap.error(f"--val-start {a.val_start} and --val {a.val} must pick held-out images inside the {n} training images")
    limit = min(preset.train_limit or a.val_start, a.val_start)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = ImageData(full.train_x[:limit], full.train_y[:limit], full.test_x, full.test_y, full.source,
                     full.mean, full.std)
    val = (full.train_x[a.val_start:a.val_start + a.val], full.train_y[a.val_start:a.val_start + a.val])
    cfg = preset.model_config("cnn", data)
    t0 = time.perf_counter()
    shared = SharedWeights(cfg, seed=0)
    train_shared(shared, data, a.shared_steps, preset.batch_size, preset.lr, 0, log=print)
    t_shared = time.perf_counter() - t0

    def score(policy):
        s = score_policy(shared, policy, data, val)
        print(f"  {policy}: {100 * s:.2f} %", flush=True)
        return s

    t1 = time.perf_counter()
    found = search_policy(score, shared.sizes, a.budget_bits, population=a.population, generations=a.generations)
    t_search = time.perf_counter() - t1
    result = {"search": found.to_dict(), "shared_steps": a.shared_steps, "val_images": a.val,
              "shared_training_s": t_shared, "search_s": t_search,
              "command": "python -m floatlab.train.bit_policy " + " ".join(argv or __import__("sys").argv[1:])}
    print(f"found {found.policy} (proxy {100 * found.score:.2f} %, {found.cost} bits) vs uniform {found.uniform} "
          f"(proxy {100 * found.uniform_score:.2f} %, budget {found.budget} bits)")
    recipes = {"searched": policy_recipe(shared.sizes, found.policy, f"searched_{policy_name(shared.sizes, found.policy)}"),
               "uniform": policy_recipe(shared.sizes, found.uniform, f"uniform_{policy_name(shared.sizes, found.uniform)}")}
    for k, r in recipes.items():
        (out / f"{k}.json").write_text(json.dumps(r.to_dict(), indent=1))
    (out / "policy_search.json").write_text(json.dumps(result, indent=1))
    result["trained"] = {}
    if found.policy == found.uniform:          # nothing to compare: train it once
        recipes = {"uniform": recipes["uniform"]}
    for k, r in recipes.items():
        accs = []
        for seed in range(a.seeds):
            res = train_image_run(r, seed, preset, "cnn", out / "runs" / k / f"seed{seed}", data)
            accs.append(res.final_accuracy)
        result["trained"][k] = {"recipe": r.name, "test_accuracy_per_seed": accs,
                                "test_accuracy": statistics.mean(accs) if accs else None,
                                "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0}
        print(f"{k} {r.name}: test accuracy per seed {accs}", flush=True)
    (out / "policy_search.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
