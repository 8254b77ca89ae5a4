"""Input checks shared by ``compare``, ``ptq`` and ``eval``: every one runs before a model is
loaded or any work starts, and names the flag in its :class:`~floatlab.cli.output.CliError`."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from floatlab.cli.output import CliError, check_int, flag_errors
from floatlab.text import plural


def format_list(text: str, flag: str) -> tuple[str, ...]:
    """Comma-separated format names, each known to floatlab, none twice."""
    from floatlab.ptq.quantizer import QuantSpec

    names = tuple(f.strip() for f in text.split(",") if f.strip())
    if not names:
        raise CliError("no format given (comma-separated names, e.g. bf16,mxfp4)", flag)
    seen = set()
    for f in names:
        with flag_errors(flag):
            QuantSpec(f)
        if f.lower() in seen:
            raise CliError(f"{f!r} is given twice", flag)
        seen.add(f.lower())
    return names


def spec(name: str, flag: str, pad: bool = True, group_size: int | None = None):
    """A :class:`QuantSpec` for ``name`` (``group_size``: a scalar format's scale group; refused
    for block formats and codecs under ``--group-size``), or a :class:`CliError` naming ``flag``."""
    from floatlab.ptq.quantizer import QuantSpec

    if group_size is not None:
        check_int(group_size, "--group-size", 1)
        with flag_errors("--group-size"):
            return QuantSpec(name, group_size=group_size, pad=pad)
    with flag_errors(flag):
        return QuantSpec(name, pad=pad)


def method_steps(method: str, flag: str = "--method") -> tuple[tuple[str, ...], str]:
    """``(transforms, rounder)`` of a method chain such as ``rotate+gptq``."""
    from floatlab.ptq.config import PTQConfig

    with flag_errors(flag):
        return PTQConfig(weight=None, method=method).steps()


def needs_calibration(steps: tuple[tuple[str, ...], str]) -> bool:
    transforms, rounder = steps
    return rounder != "rtn" or any(t in ("awq", "smoothquant") for t in transforms)


def method_grid(text: str, flag: str = "--method") -> tuple[str, tuple]:
    """``(normalized text, steps of each method)`` for one method chain or several separated by
    commas (``rtn,gptq,rotate+gptq``), none twice."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise CliError("no method given (e.g. rtn, gptq, rotate+gptq; several separated by commas)", flag)
    seen = set()
    for m in methods:
        if m.lower() in seen:
            raise CliError(f"{m!r} is given twice", flag)
        seen.add(m.lower())
    return ",".join(methods), tuple(method_steps(m, flag) for m in methods)


def check_text_field(text_field: str | None, calib_data, eval_data) -> None:
    """``--text-field`` names a field of the user's own data; without ``--calib-data`` or
    ``--eval-data`` it would be ignored (the built-in text has no fields), so it is refused."""
    if text_field is not None and calib_data is None and eval_data is None:
        raise CliError(f"{text_field!r} names the text field of --calib-data/--eval-data (.jsonl, .parquet, "
                       "datasets); give one of them, or drop --text-field (the built-in text has no fields)",
                       "--text-field")


def text_data(path, flag: str, text_field: str | None = None):
    """A user's own texts (:func:`floatlab.eval.data.load_texts`), read before any model loads;
    ``None`` for ``None``. A missing, empty or unreadable file, or one without ``text_field``,
    is a :class:`CliError` naming ``flag``."""
    if path is None:
        return None
    from floatlab.eval.data import DataError, load_texts

    with flag_errors(flag, DataError):
        return load_texts(path, text_field)


def nonfinite(text: str, flag: str = "--nonfinite-tokens") -> str:
    """PTQConfig's ``nonfinite_tokens``: ``error`` or ``exclude``."""
    from floatlab.cli.output import parse_choice
    from floatlab.ptq.calibration import NONFINITE_POLICIES

    return parse_choice(text, NONFINITE_POLICIES, flag)


def device(text: str | None, flag: str = "--device"):
    """A ``torch.device`` (:func:`floatlab.parallel.resolve_device`), or a :class:`CliError`."""
    from floatlab.parallel import resolve_device

    with flag_errors(flag):
        return resolve_device(text)


def check_calib(calib: int, steps, method: str, flag: str = "--calib") -> int:
    if needs_calibration(steps):
        return check_int(calib, flag, 1, hint=f"method {method!r} calibrates on these texts/windows")
    return check_int(calib, flag, 0)


def check_gptq_formats(specs, steps, flag: str) -> None:
    """GPTQ rounds column by column: it needs 1D blocks (``nvfp4_2d``'s 16x16 tiles need RTN)."""
    if steps[1] != "gptq":
        return
    for s in specs:
        if s is not None and s.is_block and len(s.fmt.block) != 1:
            raise CliError(f"GPTQ needs 1D blocks; {s.format!r} has {'x'.join(map(str, s.fmt.block))} tiles "
                           "(use --method rtn, or a 1D block format)", flag)


def retrieval_pair_count() -> int:
    from floatlab.eval.data import retrieval_pairs

    return len(retrieval_pairs())


def check_pairs(pairs: int, flag: str = "--pairs") -> int:
    total = retrieval_pair_count()
    return check_int(pairs, flag, 0, total, hint=f"0 uses all {total}")


def resolve(model: str, flag: str = "--model"):
    """``(name, folder, kind, baseline_note, config dict)`` of a built-in model (any case) or a
    local model folder; prepares a built-in model that is not in the cache yet."""
    from floatlab.models.loading import resolve_model
    from floatlab.models.registry import ModelError

    try:
        name, folder, kind, note = resolve_model(model, log=_log)
    except ModelError as err:
        raise CliError(str(err), flag) from None
    cfg = json.loads((Path(folder) / "config.json").read_text())
    return name, Path(folder), kind, note, cfg


def _log(text: str) -> None:
    from floatlab.cli.output import say
    say(text)


def check_window(window: int, cfg: dict, flag: str = "--window") -> int:
    """Tokens per perplexity window: at least 2 (one prediction), at most the model's context."""
    limit = int(cfg.get("max_position_embeddings") or 0) or None
    return check_int(window, flag, 2, limit, hint=f"the model's context is {limit} tokens" if limit else "")


def check_overrides(overrides, layer_names, flag: str = "--override") -> None:
    """Every ``--override`` pattern must match at least one quantized layer (else it is a silent
    no-op, almost always a typo)."""
    for pattern, _, _ in overrides:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in layer_names):
            sample = ", ".join(list(layer_names)[:3])
            raise CliError(f"pattern {pattern!r} matches no quantized layer (layer names look like "
                           f"{sample}, ...; use * as a wildcard)", flag)


def check_layers(layers, config, flag: str) -> None:
    """A block format whose block does not divide a layer's width while padding is off."""
    from floatlab.ptq.apply import check_blocks

    with flag_errors(flag):
        check_blocks(layers, config)


def load(model, device=None):
    """:func:`floatlab.models.load_model` for the commands (on ``device``): messages through
    :func:`say`, and without transformers' own "Loading weights" bar (one more bar per load
    would flood logs)."""
    from floatlab.models.loading import load_model

    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    return load_model(model, log=_log, device=device)


def check_data(lm, *, pairs: int, windows: int, window: int, calib: int, calibrates: bool,
               calib_data=None, eval_data=None) -> None:
    """After the model (and its tokenizer) loaded, before any work: the evaluation text (built-in
    or ``eval_data``) must hold the evaluated windows, a BOS token in front of a window must still
    fit the model's context, the calibration text (built-in or ``calib_data``) must hold the
    calibration windows, and where both are the same text the calibration texts/windows must be
    distinct from the evaluated ones (else they would silently be fewer, or overlap the
    evaluation)."""
    from floatlab.cli.output import warn
    from floatlab.eval.data import builtin_data
    from floatlab.eval.metrics import adds_bos

    evals, cals = eval_data or builtin_data(), calib_data or builtin_data()
    same = evals.sha256 == cals.sha256
    if lm.kind == "encoder":
        if not calibrates:
            return
        if calib_data is not None or eval_data is not None:
            if same:
                warn(f"--calib-data is the evaluation data: the {calib} calibration texts are among the evaluated "
                     "ones (calibration overlaps the evaluation)")
            elif calib_data is not None and calib > len(calib_data.texts):
                raise CliError(f"{calib_data.source['path']} holds {plural(len(calib_data.texts), 'text')}; use --calib "
                               f"{len(calib_data.texts)} or fewer", "--calib")
            return
        total = retrieval_pair_count()
        free = total - (pairs if 0 < pairs < total else total)
        if free == 0:
            warn(f"--pairs {pairs} evaluates all {total} passages: the {calib} calibration texts are drawn from "
                 "them too (calibration overlaps the evaluation)")
        elif calib > free:
            raise CliError(f"only {free} passages are not among the {pairs} evaluated pairs; use --calib {free} or "
                           "fewer, or fewer --pairs", "--calib")
        return
    limit = int(getattr(lm.model.config, "max_position_embeddings", 0) or 0)
    if adds_bos(lm.tokenizer) and limit and window + 1 > limit:
        raise CliError(f"the tokenizer puts a BOS token in front of each window: {window} + 1 tokens exceed the "
                       f"model's context of {limit}; use --window {limit - 1} or less", "--window")

    def count(data):
        return len(lm.tokenizer(data.joined(), add_special_tokens=False)["input_ids"]) // window
    avail = count(evals)
    what = "the evaluation text" if eval_data is None else eval_data.source["path"]
    if windows > avail:
        raise CliError(f"{what} holds {plural(avail, 'window')} of {window} tokens; use --windows {avail} "
                       "or fewer (or a smaller --window)", "--windows")
    if not calibrates:
        return
    if same and windows + calib > avail:
        raise CliError(f"{what} holds {plural(avail, 'window')} of {window} tokens and {windows} are evaluated; "
                       f"calibration windows must come after them: use --calib {avail - windows} or fewer",
                       "--calib")
    if not same and calib > (n := count(cals)):
        where = "the built-in text" if calib_data is None else calib_data.source["path"]
        raise CliError(f"{where} holds {n} calibration windows of {window} tokens; use --calib {n} or fewer "
                       "(or a smaller --window)", "--calib")
