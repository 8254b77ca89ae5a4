from typer.testing import CliRunner

from floatlab.cli import app

runner = CliRunner()


def test_formats_table_lists_every_format():
    r = runner.invoke(app, ["formats"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for name in ["e4m3", "hif8", "e8m0", "int4", "tf32"]:
        assert name in r.output
    assert "57344" in r.output and "2^15" in r.output


def test_formats_shows_the_largest_float64_as_it_is_not_as_2_to_1024():
    """math.log2 rounds (2 - 2^-52) * 2^1023 to 1024.0: the max of e11m52 printed as 2^1024."""
    r = runner.invoke(app, ["formats", "e11m52"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "2^1024" not in r.output and "1.7976931348623157e+308" in r.output and "2^-1074" in r.output


def test_formats_prints_each_value_whole():
    """q3.4's max printed as 7.938 (4 significant digits), which is not a q3.4 value."""
    r = runner.invoke(app, ["formats", "q3.4"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "7.9375" in r.output and "7.938 " not in r.output, r.output
    r = runner.invoke(app, ["formats", "bf16"], env={"COLUMNS": "200"})
    assert "3.3895313892515355e+38" in r.output   # (2 - 2^-7) * 2^127, read back exactly


def test_formats_values_lists_every_code():
    r = runner.invoke(app, ["formats", "hif8", "--values"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "0x6F" in r.output and "inf" in r.output and "0x80" in r.output
    assert r.output.count("0x") == 256


def test_formats_unknown_name_is_a_clear_error():
    r = runner.invoke(app, ["formats", "hifloat9"])
    assert r.exit_code != 0 and "Did you mean" in r.output


# ---- issue 13: what a new user meets -----------------------------------------------------------
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402

import floatlab  # noqa: E402
from floatlab import progress  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain(text: str) -> str:
    return ANSI.sub("", text)


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"floatlab {floatlab.__version__}"


# item 6: numbers are never cut, on any terminal width and in redirected output
E4M3_FACTS = ["0.015625", "2^-9", "448", "0.125", "253"]   # written out, independent of _num


@pytest.mark.parametrize("env", [{}, {"COLUMNS": "80"},
                                 {"FORCE_COLOR": "1", "COLUMNS": "80"}, {"FORCE_COLOR": "1", "COLUMNS": "100"},
                                 {"FORCE_COLOR": "1", "COLUMNS": "140"}],
                         ids=["redirected", "redirected-80", "tty-80", "tty-100", "tty-140"])
def test_formats_tables_never_cut_numbers(env):
    r = runner.invoke(app, ["formats"], env=env)
    out = _plain(r.output)
    assert r.exit_code == 0, out
    assert "…" not in out
    for name in floatlab.list_formats("scalar"):
        info = floatlab.finfo(name)
        assert re.search(rf"\b{re.escape(name)}\b", out), name
        assert str(info.num_finite) in out, (name, info.num_finite)
    for name in floatlab.list_formats("block"):
        assert re.search(rf"\b{re.escape(name)}\b", out), name
    one = _plain(runner.invoke(app, ["formats", "e4m3"], env=env).output)
    assert "…" not in one and all(fact in one for fact in E4M3_FACTS), one
    if "COLUMNS" in env and env.get("FORCE_COLOR"):     # a terminal: no line wider than it
        assert max(len(line) for line in out.splitlines()) <= int(env["COLUMNS"])


def test_redirected_output_is_plain_markdown():
    r = runner.invoke(app, ["formats", "e4m3"])
    assert "\x1b[" not in r.output and "┃" not in r.output
    rows = [line for line in r.output.splitlines() if line.startswith("|")]
    assert rows[0].split("|")[1].strip() == "format" and rows[2].split("|")[1].strip() == "e4m3"
    upper = runner.invoke(app, ["formats", "E4M3"])                  # names are case-insensitive
    assert upper.exit_code == 0 and upper.output == r.output


def test_formats_quality_redirected_keeps_exponents(tmp_path):
    r = runner.invoke(app, ["formats", "e4m3", "--quality", "--n", "1024", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    rel = res["rows"][0]["rel_mse"]
    for d, v in rel.items():
        assert f"{v:.3e}" in r.output, (d, v)           # the whole number, exponent included
    assert res["environment"]["versions"]["floatlab"] == floatlab.__version__
    assert res["samples"] == 1024 and res["command"].startswith("floatlab formats")
    assert "measuring: 1/1 formats" in r.output       # line progress when not a terminal


# item 7: block formats have a row of their own
@pytest.mark.parametrize("name", floatlab.list_formats("block"))
def test_formats_block_format_row(name):
    fmt = floatlab.get_format(name)
    r = runner.invoke(app, ["formats", name])
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if line.startswith(f"| {name} "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == [name, fmt.element.name, fmt.scale.name, "x".join(map(str, fmt.block)), fmt.rule.value,
                     "fp32" if fmt.tensor_scale else "-", f"{fmt.bits_per_value:g}"]


def test_formats_block_values_lists_the_element_codes():
    r = runner.invoke(app, ["formats", "nvfp4", "--values"])
    assert r.exit_code == 0, r.output
    codes = [line for line in r.output.splitlines() if re.match(r"\|\s+0x", line)]
    assert len(codes) == 16                       # E2M1: 16 codes
    assert any(c.split("|")[3].strip() == "6.0" for c in codes)


# item 5: every user mistake is one line, exit code 2, before any work
def _no_model_loading(monkeypatch):
    """Make loading any model's weights fail loudly (patched on transformers' classes, so no
    module that imported ``load_model`` by name keeps a patched copy after the test)."""
    try:
        import transformers
    except ImportError:
        return                              # without transformers no model can load anyway

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")
    for cls in (transformers.AutoModel, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def _mistakes(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    return [
        (["formats", "hifloat9"], "NAME"),
        (["formats", "--quality", "--n", "0"], "--n"),
        (["formats", "fp32", "--quality"], "--quality"),
        (["formats", "--values"], "--values"),
        (["formats", "--n", "2048"], "--n"),                           # was ignored (session 24 trial)
        (["formats", "e4m3", "--out", str(tmp_path)], "--out"),
        (["formats", "--quality", "--n", "1024", "--out", str(a_file)], "--out"),
        (["formats", "--plot", str(a_file / "sub")], "--plot"),
        (["gemm", "--sizes", "0"], "--sizes"),
        (["gemm", "--dists", "gauss"], "--dists"),
        (["gemm", "--methods", "ozaki:x"], "--methods"),
        (["gemm", "--accumulator", "fp33:rtz"], "--accumulator"),
        (["gemm", "--accumulator", "fp32:rtz:0"], "--accumulator"),
        (["gemm", "--out", str(a_file)], "--out"),
        (["bench", "speed", "--size", "0"], "--size"),
        (["bench", "speed", "--reps", "0"], "--reps"),
        (["bench", "speed", "--case", "e5m2"], "--case"),
        (["models", "--prepare", "smol"], "--prepare"),
        (["compare", "--window", "0"], "--window"),
        (["compare", "--windows", "-1"], "--windows"),
        (["compare", "--pairs", "-1"], "--pairs"),
        (["compare", "--pairs", "100000"], "--pairs"),
        (["compare", "--calib", "-1"], "--calib"),
        (["compare", "--method", "gptq", "--calib", "0"], "--calib"),
        (["compare", "--method", "rotate+foo"], "--method"),
        (["compare", "--formats", "bf16,fp5"], "--formats"),
        (["compare", "--formats", "bf16,BF16"], "--formats"),
        (["compare", "--formats", " , "], "--formats"),
        (["compare", "--formats", "nvfp4_2d", "--method", "gptq"], "--formats"),
        (["compare", "--formats", "bf16", "--out", str(a_file)], "--out"),
        (["compare", "--formats", "bf16", "--out", str(a_file / "sub")], "--out"),
        (["compare", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "--model"),
        (["compare", "--model", str(a_file), "--out", str(tmp_path / "o")], "--model"),
        (["compare", "--model", "minlm", "--out", str(tmp_path / "o")], "--model"),
        (["compare", "--pairs", "x"], "--pairs"),
        (["advise", "--budget", "0", "--out", str(tmp_path / "o")], "--budget"),     # said --formats/--budget/--kind
        (["advise", "--budget", "4.5", "--sensitivity", "fishr", "--out", str(tmp_path / "o")], "--sensitivity"),
        (["advise", "--budget", "4.5", "--solver", ",", "--out", str(tmp_path / "o")], "--solver"),
        (["solve", "--gmres-tol", "-1"], "--gmres-tol"),             # ran the whole study (session 24 trial)
        (["solve", "--gmres-tol", "1"], "--gmres-tol"),
        (["train", "--recipe", "bf16", "--corpus", f"file:{empty}", "--out", str(tmp_path / "o")], "--corpus"),
        (["compare", "--text-field", "body", "--out", str(tmp_path / "o")], "--text-field"),   # was ignored
        (["ptq", "--text-field", "body", "--out", str(tmp_path / "o")], "--text-field"),
        (["compare", "--no-such-flag"], "--no-such-flag"),
        (["ptq", "--out", str(a_file)], "--out"),
        (["ptq", "--format", "hif9", "--out", str(tmp_path / "o")], "--format"),
        (["ptq", "--act-format", "e9m9x", "--out", str(tmp_path / "o")], "--act-format"),
        (["ptq", "--override", "nonsense", "--out", str(tmp_path / "o")], "--override"),
        (["ptq", "--override", "*.query=int3x", "--out", str(tmp_path / "o")], "--override"),
        (["ptq", "--windows", "0", "--out", str(tmp_path / "o")], "--windows"),
        (["ptq", "--method", "awq", "--calib", "0", "--out", str(tmp_path / "o")], "--calib"),
        (["ptq"], "--out"),
        (["eval", str(tmp_path / "nope")], "FOLDER"),
        (["eval", str(a_file)], "FOLDER"),
        (["eval", str(tmp_path)], "FOLDER"),
    ]


def test_mistakes_are_one_clean_line_before_any_work(tmp_path, monkeypatch):
    _no_model_loading(monkeypatch)
    for args, flag in _mistakes(tmp_path):
        r = runner.invoke(app, args)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2, (args, r.output, r.exception)
        assert "Traceback" not in r.output, args
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.output)
        assert flag in lines[0], (args, lines[0])
    assert not (tmp_path / "o").exists()      # an output folder made by the check is removed again


def test_gemm_on_its_own_keeps_one_line_errors():
    from floatlab.cli.gemm import app as gemm_app

    r = runner.invoke(gemm_app, ["--methods", "sgemm_cub"])
    assert r.exit_code == 2 and r.output.startswith("error: --methods") and "sgemm_cube" in r.output


def test_ptq_refuses_to_overwrite_without_asking(tmp_path, monkeypatch):
    _no_model_loading(monkeypatch)
    (tmp_path / "config.json").write_text("{}")
    r = runner.invoke(app, ["ptq", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--overwrite" in r.output and "earlier result" in r.output
    assert (tmp_path / "config.json").read_text() == "{}"


# every command that writes results into --out asks before replacing its own earlier result, like
# ptq, as the last check before the work (a flag mistake is named first, never after a prompt);
# other files in the folder do not count (session 24 trial: compare and lm-eval wrote over one).
# lm-eval's case is in test_lm_eval.py (it needs a causal LM and a task).
EARLIER = [
    (["compare", "--formats", "bf16", "--model", "minilm"], "report.md", ["--pairs", "100000"]),
    (["sweep", "--model", "minilm", "--methods", "rtn", "--bits", "4"], "results.json", ["--windows", "0"]),
    (["advise", "--budget", "6", "--formats", "int4,int8", "--model", "minilm"], "recipe.json",
     ["--solver", "simplex"]),
    (["gemm", "--sizes", "8", "--dists", "normal", "--methods", "fp32"], "gemm.json", ["--sizes", "0"]),
    (["solve", "--n", "4", "--kappas", "1e1", "--formats", "fp16", "--methods", "lu-ir", "--working", "fp64"],
     "results.json", ["--mode", "7"]),
    (["formats", "--quality", "--n", "1024", "e4m3"], "quality.md", ["--n", "10"]),
]


@pytest.mark.parametrize("args,earlier,mistake", EARLIER, ids=[a[0] for a, _, _ in EARLIER])
def test_commands_ask_before_writing_over_an_earlier_result(tmp_path, monkeypatch, args, earlier, mistake):
    loads_model = "--model" in args
    if loads_model:
        from floatlab.models import registry
        if registry._minilm_path() is None:
            pytest.skip("needs the models extra (MiniLM)")
    _no_model_loading(monkeypatch)
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")                  # a foreign file alone is no earlier result
    (out / earlier).write_text("{}")
    r = runner.invoke(app, [*args, *mistake, "--out", str(out)])
    assert r.exit_code == 2 and f"error: {mistake[0]}" in r.output and "--overwrite" not in r.output, r.output
    r = runner.invoke(app, [*args, "--out", str(out)])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith("error: ") and "--overwrite" in lines[0] and "earlier result" in lines[0], r.output
    assert (out / earlier).read_text() == "{}" and (out / "notes.txt").read_text() == "mine"
    (out / earlier).unlink()
    r = runner.invoke(app, [*args, "--out", str(out), "--overwrite"] if not loads_model else [*args, "--out", str(out)])
    if loads_model:                  # a foreign file alone passes: the command goes on to load the model
        assert isinstance(r.exception, AssertionError) and "a model was loaded" in str(r.exception), r.output
        (out / earlier).write_text("{}")
        r = runner.invoke(app, [*args, "--out", str(out), "--overwrite"])
        assert isinstance(r.exception, AssertionError) and "a model was loaded" in str(r.exception), r.output
    else:                            # small enough to run: the result is written, then replaced with --overwrite
        assert r.exit_code == 0, r.output
        first = (out / earlier).read_text()
        r = runner.invoke(app, [*args, "--out", str(out), "--overwrite"])
        assert r.exit_code == 0 and (out / earlier).read_text() != "{}", r.output
        assert (out / "notes.txt").read_text() == "mine" and first


def test_counts_take_the_singular_for_one():
    """report.md said 'on 1 threads'; the kind: every count printed with a plural noun."""
    from floatlab.text import plural

    assert (plural(1, "thread"), plural(2, "thread"), plural(0, "layer")) == ("1 thread", "2 threads", "0 layers")
    assert plural(1, "process", "processes") == "1 process" and plural(3, "process", "processes") == "3 processes"
    r = runner.invoke(app, ["gemm", "--sizes", "8", "--dists", "normal", "--methods", "fp32"])
    assert r.exit_code == 0 and "of 1 run flagged" in r.output, r.output


def test_confirm_overwrite_asks_on_a_terminal(monkeypatch):
    from floatlab.cli import output

    class Tty(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(output.sys, "stdin", Tty())
    monkeypatch.setattr(output.sys, "stdout", Tty())
    answers = []
    monkeypatch.setattr(output.typer, "confirm", lambda text, default: answers.append(text) or False)
    with pytest.raises(output.CliError, match="not overwritten"):
        output.confirm_overwrite("DIR holds an earlier result", overwrite=False)
    monkeypatch.setattr(output.typer, "confirm", lambda text, default: answers.append(text) or True)
    output.confirm_overwrite("DIR holds an earlier result", overwrite=False)
    assert len(answers) == 2 and "Overwrite" in answers[0]
    output.confirm_overwrite("never asked", overwrite=True)
    assert len(answers) == 2


# item 13: square brackets survive every message, on a terminal and off it
@pytest.mark.parametrize("env", [{}, {"FORCE_COLOR": "1"}], ids=["redirected", "tty"])
def test_brackets_in_messages_survive(monkeypatch, env, tmp_path):
    from floatlab.models import registry

    monkeypatch.setattr(registry, "_minilm_path", lambda: None)       # the models extra is missing
    r = runner.invoke(app, ["compare", "--formats", "bf16", "--out", str(tmp_path / "o")], env=env)
    assert r.exit_code == 2, r.output
    assert "pip install 'floatlab[models]'" in _plain(r.output)


def test_brackets_in_tables_and_plain_messages_survive(capsys):
    from floatlab.cli import output

    output.say("shape [4, 64] in [0, 1) needs 'floatlab[models]'")
    output.show_table("t [bold]x[/bold]", ("a [b]", "c"), [["[models]", "[red]1[/red]"]])
    out = capsys.readouterr().out
    for text in ("shape [4, 64] in [0, 1) needs 'floatlab[models]'", "t [bold]x[/bold]", "a [b]", "[models]",
                 "[red]1[/red]"):
        assert text in out, text


def test_help_texts_keep_their_brackets():
    from typer.main import get_command

    root = get_command(app)
    seen = 0
    for name, cmd in root.commands.items():
        subs = cmd.commands.items() if hasattr(cmd, "commands") else [(None, cmd)]
        for sub, c in subs:
            args = [name] + ([sub] if sub else []) + ["--help"]
            r = runner.invoke(app, args, env={"COLUMNS": "400"})
            assert r.exit_code == 0, (args, r.output)
            text = " ".join(_plain(r.output).split())
            for p in c.params:
                h = getattr(p, "help", None) or ""
                for bracketed in re.findall(r"\[[^\]]*\]", h):
                    seen += 1
                    assert bracketed in text, (args, p.name, bracketed)
    assert seen >= 1


# item 8: progress, shared and screen-free
def test_progress_is_silent_without_a_reporter(capsys):
    assert list(progress.track(range(3), "x")) == [0, 1, 2]
    with progress.task("y", 2) as t:
        t.advance()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_lines_when_not_a_terminal():
    stream = io.StringIO()
    rep = progress.for_stream(stream)
    assert isinstance(rep, progress.LineReporter)
    rep.every = 0.0                                 # a line per step
    with progress.reporting(rep), progress.scope("mxfp4"):
        names = list(progress.track(["q", "k"], "gptq", unit="layers", note=str))
    lines = stream.getvalue().splitlines()
    assert names == ["q", "k"]
    assert [ln.split(" [")[0] for ln in lines] == ["mxfp4 / gptq: 1/2 layers (q)", "mxfp4 / gptq: 2/2 layers (k)"]


def test_progress_default_lines_one_per_short_task():
    stream = io.StringIO()
    with progress.reporting(progress.LineReporter(stream)):
        list(progress.track(range(5), "rtn", unit="layers"))
    assert [ln.split(" [")[0] for ln in stream.getvalue().splitlines()] == ["rtn: 5/5 layers"]


def test_progress_bars_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    rep = progress.for_stream(Tty())
    assert isinstance(rep, progress.RichReporter)
    with progress.reporting(rep):
        assert sum(progress.track(range(4), "calibration pass [x]", unit="batches")) == 6


def test_numerics_never_import_progress_or_screens():
    import ast
    from pathlib import Path

    root = Path(floatlab.__file__).parent
    for pkg in ("formats", "plain", "kernels", "ops", "rounding.py", "reference", "tensor"):
        for path in ([root / pkg] if pkg.endswith(".py") else (root / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                bad = [n for n in names if n.startswith(("floatlab.progress", "rich", "floatlab.cli"))]
                assert not bad, (path, bad)


# item 10: compare's plots
def _capture_figures(monkeypatch):
    from floatlab.eval import report

    figs = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figs.append(fig))
    return figs


def test_recall_plot_has_intervals_and_the_fp32_line(monkeypatch, tmp_path):
    from floatlab.eval import report

    figs = _capture_figures(monkeypatch)
    rows = [{"format": f, "bits_per_value": b, "recall_at_1": r, "retrieval": {"recall_at_1_ci": [r - 0.1, r + 0.05]}}
            for f, b, r in (("bf16", 16, 0.7), ("mxfp4", 4.25, 0.6))]
    report.plot_metric_vs_bits(rows, "recall_at_1", "recall@1", tmp_path / "r.png", ci="retrieval.recall_at_1_ci",
                               reference=0.69)
    from matplotlib.container import ErrorbarContainer

    ax = figs[0].axes[0]
    err = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(err) == 1
    segs = err[0].lines[2][0].get_segments()
    assert sorted((round(s[0][0], 6), round(s[1][0], 6)) for s in segs) == [(0.5, 0.65), (0.6, 0.75)]
    assert any(list(line.get_xdata()) == [0.69, 0.69] for line in ax.lines)


def test_perplexity_plot_has_the_fp32_line(monkeypatch, tmp_path):
    from floatlab.eval import report

    figs = _capture_figures(monkeypatch)
    rows = [{"format": "int4", "bits_per_value": 4, "perplexity": 30.0}, {"format": "bf16", "bits_per_value": 16,
                                                                           "perplexity": 18.3}]
    report.plot_metric_vs_bits(rows, "perplexity", "perplexity", tmp_path / "p.png", reference=18.2)
    assert any(list(line.get_xdata()) == [18.2, 18.2] for line in figs[0].axes[0].lines)


def test_layer_sqnr_plot_is_labelled_by_layer_type_and_block(monkeypatch, tmp_path):
    from floatlab.eval import report

    figs = _capture_figures(monkeypatch)
    kinds = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj"]
    sq = {f"model.layers.{b}.{k}": 10.0 + b + i for b in range(30) for i, k in enumerate(kinds)}   # 210 layers
    report.plot_layer_sqnr([{"format": "hif4", "layer_sqnr_db": sq}], tmp_path / "s.png")
    by_type, by_block = figs[0].axes
    assert [t.get_text() for t in by_type.get_xticklabels()] == kinds
    line = by_block.lines[0]
    assert list(line.get_xdata()) == list(range(30)) and list(line.get_ydata()) == [10.0 + b for b in range(30)]


# item 12: files are written whole, with the umask's mode
@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_every_written_file_honours_the_umask(tmp_path, umask_027):
    import torch

    from floatlab.atomic import write_json

    floatlab.save(tmp_path / "t.safetensors", {"w": floatlab.encode(torch.randn(4, 64), "nvfp4"), "b": torch.ones(2)})
    write_json(tmp_path / "r.json", {"a": 1})
    r = runner.invoke(app, ["gemm", "--sizes", "16", "--methods", "fp32", "--dists", "normal", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    names = ["t.safetensors", "r.json", "gemm.json", "gemm.md", "gemm.png", "results.json"]
    assert {n: oct(os.stat(tmp_path / n).st_mode & 0o777) for n in names} == {n: oct(umask_027) for n in names}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)       # no temporary file left
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["environment"]["versions"]["torch"] == torch.__version__ and len(res["rows"]) == 1


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    target = tmp_path / "t.safetensors"
    floatlab.save(target, {"a": torch.zeros(3)})
    before = target.read_bytes()

    def half_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    with pytest.raises(OSError):
        floatlab.save(target, {"a": torch.ones(3)})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]
    assert torch.equal(floatlab.load(target)["a"], torch.zeros(3))


@pytest.mark.parametrize("width", [50, 80, 90, 100, 140, 200])
def test_terminal_tables_fit_the_terminal_and_keep_every_cell(width, monkeypatch):
    from rich.console import Console

    from floatlab.cli import output

    buf = io.StringIO()
    monkeypatch.setattr(output, "_console", lambda stderr=False: Console(
        file=buf, width=width, force_terminal=True, color_system=None, highlight=False, markup=False))
    cols = ["rank", "format", "bits/value", "cos mean", "cos worst", "R@1", "dR@1 [95% CI]", "R@10", "min SQNR dB", "s"]
    rows = [["1", "bf16", "16", "1.0000", "0.99987", "0.688", "+0.000 [-0.047, +0.047]", "0.912", "42.4", "16.0"],
            ["2", "mxfp8_e4m3", "8.25", "0.9956", "0.9869", "0.703", "+0.016 [+0.000, +0.047]", "0.934", "14.3", "122.5"]]
    output.show_table("floatlab compare: minilm (W+A, rtn)", cols, rows, right=cols[2:])
    out = buf.getvalue()
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= width
    words = out.split()
    for r in rows:
        for cell in r:
            for word in cell.split():             # text cells may wrap at spaces; nothing else moves
                assert word in words, (width, word)


# item 8: the first quantize call compiles silently for seconds: the CLI says so, once per process
def test_compile_note_is_said_once(monkeypatch, capsys):
    from floatlab.cli import output
    from floatlab.kernels.compiler import compile_available

    if not compile_available():
        pytest.skip("no compiled kernels here: nothing to say")
    monkeypatch.setattr(output, "_noted", set())
    monkeypatch.delenv("FLOATLAB_FAST", raising=False)
    output.compile_note()
    output.compile_note()
    err = _plain(capsys.readouterr().err)
    assert err.count("note: the first use of a format") == 1 and "FLOATLAB_FAST=0" in err, err


# item 6's kind in --help (8ce2320): rich's option table cut long defaults to '…' in 80 columns
def test_help_never_cuts_text_in_80_columns():
    from typer.main import get_command

    group = get_command(app)
    for name in sorted(group.commands):
        r = runner.invoke(app, [name, "--help"], env={"COLUMNS": "80"})
        assert r.exit_code == 0 and "…" not in r.output, (name, r.output)
    r = runner.invoke(app, ["compare", "--help"], env={"COLUMNS": "80"})
    assert "bf16,e4m3,e5m2,hif8,mxfp8_e4m3,int8,mxfp4,nvfp4,hif4,int4" in "".join(r.output.split())


# item 11: help(floatlab.quantize) tells the block options, the errors and the autograd contract;
# the format facts are part of the repo's docs and the README links them
def test_quantize_help_and_the_format_facts_are_in_the_docs():
    from pathlib import Path

    doc = floatlab.quantize.__doc__
    for word in ("axis", "pad", "Raises", "TypeError", "ValueError", "straight-through", "grad="):
        assert word in doc, word
    root = Path(__file__).resolve().parents[1]
    assert (root / "docs" / "formats.md").is_file() and "(docs/formats.md)" in (root / "README.md").read_text()


def test_ctrl_c_ends_a_command_with_one_line_and_its_hint(capsys):
    """typer turns a KeyboardInterrupt into a silent exit code 130 inside main: a Ctrl-C during
    floatlab train printed nothing. Every command now says ``error: interrupted`` (+ its hint)."""
    import signal

    import typer as _typer

    from floatlab.cli.output import FloatlabGroup, on_interrupt

    demo = _typer.Typer(cls=FloatlabGroup)

    @demo.command()
    def work() -> None:
        on_interrupt("rerun to resume")
        os.kill(os.getpid(), signal.SIGINT)
        import time
        time.sleep(5)                       # the interrupt lands here

    @demo.command()
    def other() -> None:
        pass

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = _typer.main.get_command(demo).main(["work"], standalone_mode=False)
        assert code == 130
        assert capsys.readouterr().err.strip() == "error: interrupted; rerun to resume"
        assert _typer.main.get_command(demo).main(["other"], standalone_mode=False) == 0
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_fp64_is_a_format_wherever_emulate_takes_it():
    r = runner.invoke(app, ["formats", "fp64"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "1.7976931348623157e+308" in r.output and "2^-1074" in r.output, r.output
    import torch
    x = torch.randn(6, dtype=torch.float64)
    assert floatlab.quantize(x, "double").equal(x)                   # rounding into IEEE double: identity
    assert "fp64" not in floatlab.list_formats()                     # listings stay about low precision


@pytest.mark.parametrize("args,words", [
    (["--kappas", "inf"], "--kappas: condition numbers must be finite"),
    (["--residual", "fp32,fp64"], "--residual: give one residual precision"),
    (["--n", "1000000"], "--n: n = 1000000 needs about"),
])
def test_solve_refuses_before_any_run(tmp_path, args, words):
    r = runner.invoke(app, ["solve", "--n", "8", *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and words in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "o").exists()
