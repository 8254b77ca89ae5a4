"""One image-classification run (recipe x seed x model): resumable when its configuration matches.

The same contract as the GPT runs (:mod:`floatlab.train.loop`): the checkpoint stores the run's
full configuration (recipe, seed, preset, model, training rule, data digest) and is continued only
when the settings asked for now would have produced it; otherwise
:class:`~floatlab.train.checkpoint.ConfigMismatch` names each difference.

Training rules: ``"backprop"`` (Adam on the recipe's quantized network, the default), and for
the sigmoid MLP of binary stochastic learning (:mod:`floatlab.nn.bsl`) ``"sgd"`` (float32 SGD),
``"sign"`` (the Manhattan rule: one device level against the sign of the exact gradient) and ``"bsl"``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.nn import functional as F

from floatlab.nn.modules import QUANTIZED_MODULES
from floatlab.nn.patch import quantize_model
from floatlab.nn.recipe import Recipe
from floatlab.nn.recipes import get_recipe
from floatlab.train.checkpoint import FILENAME, ConfigMismatch, differences, load_checkpoint, save_checkpoint
from floatlab.train.images import DATASETS, ImageData
from floatlab.train.loop import lr_at
from floatlab.train.vision import ImageModelConfig, build_model

RULES = ("backprop", "sgd", "sign", "bsl")
SGD_LR_FACTOR = 50      # rule "sgd": SGD (momentum 0.9) at 50x the preset's Adam learning rate (0.1 on small)


@dataclass(frozen=True)
class ImagePreset:
    """Data set, model sizes, batch, steps and learning rate of an image experiment."""

    name: str
    batch_size: int
    steps: int
    lr: float = 2e-3
    warmup: int = 20
    train_limit: int | None = None   # the first N training images (None: all)
    cnn_width: int = 16
    mlp_width: int = 256
    hidden: int = 128
    eval_every: int = 0
    ckpt_every: int = 100

    def with_steps(self, steps: int | None) -> "ImagePreset":
        if steps is None:
            return self
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        return replace(self, steps=steps)

    def model_config(self, kind: str, data: ImageData) -> ImageModelConfig:
        if kind not in ("mlp", "cnn"):
            raise ValueError(f"unknown image model {kind!r}: choose from mlp, cnn")
        width = self.cnn_width if kind == "cnn" else self.mlp_width
        return ImageModelConfig(kind, width, self.hidden, tuple(data.shape), data.classes)


IMAGE_PRESETS = {
    # CI-sized (with --task digits: scikit-learn's 8x8 digits), seconds per run
    "smoke": ImagePreset("smoke", 32, 40, lr=3e-3, warmup=5, cnn_width=8, mlp_width=64,
                         hidden=32, ckpt_every=20),
    # 2 shared CPU cores: the first 20,000 training images, 400 steps of 64 (1.3 epochs), a CNN of
    # 8 and 16 channels and 64 hidden units; the full 10,000-image test set
    "small": ImagePreset("small", 64, 400, lr=2e-3, warmup=20, train_limit=20000,
                         cnn_width=8, mlp_width=256, hidden=64, ckpt_every=100),
    # the whole training set, 5 epochs (for a faster machine)
    "full": ImagePreset("full", 128, 2340, lr=2e-3, warmup=50, ckpt_every=250),
}


def get_image_preset(name: str) -> ImagePreset:
    key = str(name).strip().lower()
    if key not in IMAGE_PRESETS:
        raise ValueError(f"unknown preset {name!r} for image tasks: choose from {', '.join(IMAGE_PRESETS)}")
    return IMAGE_PRESETS[key]


TASKS = ("fashion-mnist", "digits")


def load_data(task: str, preset: ImagePreset) -> ImageData:
    """The task's data set, the first ``preset.train_limit`` training images (raises
    :class:`~floatlab.train.images.DataMissing` saying how to get it, ``ValueError`` for an
    unknown task)."""
    if task not in DATASETS:
        raise ValueError(f"unknown image task {task!r}: choose from {', '.join(DATASETS)}")
    if task == "fashion-mnist":
        return DATASETS[task](preset.train_limit)
    data = DATASETS[task]()
    if preset.train_limit is not None and preset.train_limit < len(data.train_y):
        data = replace(data, train_x=data.train_x[:preset.train_limit].clone(),
                       train_y=data.train_y[:preset.train_limit].clone())
    return data


@dataclass
class ImageRunResult:
    recipe: str
    seed: int
    train_loss: list[float] = field(default_factory=list)
    test_accuracy: dict[int, float] = field(default_factory=dict)   # step -> accuracy in [0, 1]
    test_loss: dict[int, float] = field(default_factory=dict)
    step_time: list[float] = field(default_factory=list)
    done: bool = False

    @property
    def final_accuracy(self) -> float:
        return self.test_accuracy[max(self.test_accuracy)]


def quantizes(recipe: Recipe) -> bool:
    """Does the recipe quantize anything? (``fp32`` does not: its model is left untouched.)"""
    from floatlab.nn.functional import GEMMS
    specs = [recipe.default, *(r.linear for r in recipe.rules)]
    return any(s.gemm(g).quantized for s in specs for g in GEMMS)


def run_config(recipe: Recipe, seed: int, preset: ImagePreset, model: str, rule: str, data: ImageData) -> dict:
    r = recipe.to_dict()
    r.pop("description", None)
    p = asdict(preset)
    for k in ("steps", "ckpt_every"):
        p.pop(k)
    return {"task": data.source.split(":")[0], "recipe": r, "seed": int(seed), "preset": p, "model": model,
            "rule": rule, "steps": preset.steps, "data": {"sha256": data.digest, "source": data.source}}


def check_resumable(ckpt: dict, config: dict, run_dir: Path) -> int:
    """The step to continue from, or :class:`ConfigMismatch` naming each difference (a
    different number of steps is a different run: the learning rate decays to the last step)."""
    saved = ckpt.get("config")
    if saved is None:
        raise ConfigMismatch(run_dir, ["the checkpoint stores no configuration"])
    diffs = differences(saved, config, ignore=("data",))
    if saved.get("data", {}).get("sha256") != config["data"]["sha256"]:
        diffs.append(f"data: other images ({saved.get('data', {}).get('source')!r} in the checkpoint, "
                     f"{config['data']['source']!r} now)")
    if diffs:
        raise ConfigMismatch(run_dir, diffs)
    return int(ckpt["step"])


def _quiet_quantize(model, recipe: Recipe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return quantize_model(model, recipe)


def check_recipe(recipe: Recipe, cfg: ImageModelConfig) -> None:
    """Refuse a recipe whose rules name layers the model does not have (before any training).
    Raises ``ValueError`` naming the patterns and the model's layers."""
    if not quantizes(recipe):
        return
    with torch.device("meta"):
        model = _quiet_quantize(build_model(cfg), recipe)
    report = model.floatlab_quantization
    if report.unused_rules:
        names = ", ".join(report.quantized + tuple(report.kept))
        raise ValueError(f"recipe {recipe.name!r}: rule pattern(s) {', '.join(map(repr, report.unused_rules))} "
                         f"match no layer of the {cfg.kind} model (its layers: {names})")


def build(recipe: Recipe, seed: int, preset: ImagePreset, cfg: ImageModelConfig, rule: str = "backprop"):
    """Model and optimizer of one run (seeded)."""
    torch.manual_seed(seed)
    if rule != "backprop":
        from floatlab.nn.bsl import build_rule
        return build_rule(rule, cfg.in_shape, cfg.width, cfg.classes, seed=seed, lr=preset.lr * SGD_LR_FACTOR)
    model = build_model(cfg)
    if quantizes(recipe):
        _quiet_quantize(model, recipe.replace(seed=seed))
    opt = torch.optim.Adam(model.parameters(), lr=preset.lr)
    return model, opt


@torch.no_grad()
def evaluate(model, data: ImageData, batch: int = 1000) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy over the whole test set. Batch-norm statistics,
    amax histories and stochastic-rounding generators are left as they were."""
    saved = {n: b.clone() for n, b in model.named_buffers() if n.endswith("amax_history")}
    streams = {n: m.get_extra_state() for n, m in model.named_modules() if isinstance(m, QUANTIZED_MODULES)}
    was = model.training
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(data.test_y), batch):
        x, y = data.normalize(data.test_x[i:i + batch]), data.test_y[i:i + batch]
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was)
    bufs = dict(model.named_buffers())
    for n, b in saved.items():
        bufs[n].copy_(b)
    modules = dict(model.named_modules())
    for n, s in streams.items():
        modules[n].set_extra_state(s)
    return correct / len(data.test_y), loss / len(data.test_y)


def train_image_run(recipe, seed: int, preset: ImagePreset, model: str, run_dir: Path, data: ImageData,
                    rule: str = "backprop", stop_after: int | None = None, fresh: bool = False,
                    progress=None) -> ImageRunResult:
    """Train one image model for ``preset.steps`` steps, resuming from ``run_dir`` when its
    checkpoint has the same configuration (``fresh=True`` starts over). ``stop_after`` ends the
    call after that many steps in total (as a kill would). Raises :class:`ConfigMismatch`,
    ``ValueError`` (an unknown model or rule, a recipe naming layers the model lacks)."""
    from floatlab import progress as reporting

    recipe = get_recipe(recipe)
    if rule not in RULES:
        raise ValueError(f"unknown training rule {rule!r}: choose from {', '.join(RULES)}")
    cfg = preset.model_config(model, data)
    check_recipe(recipe, cfg)
    run_dir = Path(run_dir)
    path = run_dir / FILENAME
    config = run_config(recipe, seed, preset, model, rule, data)
    ckpt = None
    if fresh and path.exists():
        path.unlink()
    elif not fresh:
        ckpt = load_checkpoint(path)
        if ckpt is not None:
            check_resumable(ckpt, config, run_dir)
    net, opt = build(recipe, seed, preset, cfg, rule)
    result, start = ImageRunResult(recipe.name, seed), 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        r = ckpt["result"]
        result = ImageRunResult(**{**r, "test_accuracy": {int(k): v for k, v in r["test_accuracy"].items()},
                                   "test_loss": {int(k): v for k, v in r["test_loss"].items()}})
    task = reporting.task(f"{recipe.name if rule == 'backprop' else rule} seed {seed}", preset.steps, "steps")
    if start:
        task.advance(start, "finished earlier, reused" if result.done else f"resumed at step {start}")
    if result.done:
        task.close()
        return result

    def checkpoint(step: int) -> None:
        from floatlab.train.loop import _environment
        save_checkpoint(path, {"step": step, "model": net.state_dict(), "optimizer": opt.state_dict(),
                               "result": asdict(result), "config": config, "environment": _environment()})

    with task:
        for step in range(start, preset.steps):
            if stop_after is not None and step >= stop_after:
                return result
            t0 = time.perf_counter()
            x, y = data.batch(step, preset.batch_size, seed)
            lr = lr_at(step, preset)
            if rule == "backprop" or rule == "sgd":
                for g in opt.param_groups:
                    g["lr"] = lr if rule == "backprop" else lr * SGD_LR_FACTOR
            if rule == "backprop":
                loss = F.cross_entropy(net(data.normalize(x)), y)
            else:   # the BSL network reads pixels in [0, 1]; its loss's backward leaves the rule's update
                loss = net.training_loss(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.train_loss.append(float(loss.detach()))
            result.step_time.append(time.perf_counter() - t0)
            n = step + 1
            if n == preset.steps or (preset.eval_every and n % preset.eval_every == 0):
                acc, tl = evaluate(net, data if rule == "backprop" else _raw(data))
                result.test_accuracy[n], result.test_loss[n] = acc, tl
            if n == preset.steps:
                result.done = True
            if n == preset.steps or n % preset.ckpt_every == 0:
                checkpoint(n)
            task.advance(1, f"loss {result.train_loss[-1]:.3f}")
            if progress is not None:
                progress(n, float(loss))
    return result


def _raw(data: ImageData) -> ImageData:
    """The data with normalization off: binary stochastic learning reads pixels in [0, 1] as
    firing probabilities."""
    return replace(data, mean=0.0, std=1.0)
