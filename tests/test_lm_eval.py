"""lm-evaluation-harness on floatlab models (issue 17, part 3): a local two-task toy (multiple
choice + loglikelihood; task YAML + local JSON-lines data, no Hub) on a tiny Llama in fp32 and
quantized (int8 weights and activations); lm-eval's scores equal the ones computed here by hand
from the model's own log-likelihoods, with the tokenizer's BOS in front (its convention)."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'floatlab[models]')")
pytest.importorskip("lm_eval", reason="needs lm-evaluation-harness (pip install 'floatlab[lmeval]')")

import tinymodels as tm  # noqa: E402
from floatlab.eval.lm_eval import LmEvalError, evaluate  # noqa: E402
from floatlab.models import load_model  # noqa: E402
from floatlab.ptq import PTQConfig, quantize_model  # noqa: E402

runner = CliRunner()

MC = [("the quick brown fox jumps over the", ["lazy dog", "next word", "scale"], 0),
      ("numbers are rounded to the nearest", ["value of the format", "fox", "model"], 0),
      ("the scale of each block is a power of", ["the text", "two", "weights"], 1),
      ("weights and activations are quantized before the", ["matrix product", "dog", "tokenizer"], 0),
      ("the error of every layer adds up over the", ["disk", "model", "format"], 1),
      ("perplexity is the exponential of the mean negative", ["log likelihood", "block", "numbers"], 0)]
LL = [("a model reads the text and predicts the", "next word"),
      ("every format has its own range and", "precision"),
      ("the data is read from a file on the", "disk"),
      ("a small model is enough to test the", "code paths")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    folder = tm.build("llama", root / "llama")
    tasks = root / "tasks"
    tasks.mkdir()
    (root / "mc.jsonl").write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                                           for q, c, a in MC))
    (root / "ll.jsonl").write_text("".join(json.dumps({"context": c, "continuation": t}) + "\n" for c, t in LL))
    (tasks / "toy_mc.yaml").write_text(f"""task: toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    (tasks / "toy_ll.yaml").write_text(f"""task: toy_ll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'll.jsonl'}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + continuation}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return folder, tasks


@torch.no_grad()
def _loglik(model, tok, ctx: str, cont: str) -> tuple[float, bool]:
    """log p(cont | ctx) and whether every continuation token is the argmax: lm-eval's split of
    the tokens (encode ctx + cont, the continuation is what follows ctx's tokens), BOS in front."""
    ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
    whole = tok(ctx + cont, add_special_tokens=False)["input_ids"]
    cont_ids = whole[len(ctx_ids):]
    ids = [tok.bos_token_id] + ctx_ids + cont_ids
    logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    pos = range(len(ids) - len(cont_ids) - 1, len(ids) - 1)
    ll = sum(float(logp[p, ids[p + 1]]) for p in pos)
    return ll, all(int(logp[p].argmax()) == ids[p + 1] for p in pos)


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "int8-w8a8"])
def test_toy_tasks_score_what_the_model_computes(setup, quantized):
    folder, tasks = setup
    lm = load_model(folder)
    if quantized:
        quantize_model(lm.model, PTQConfig(weight="int8", act="int8"))
    res = evaluate(lm.model, lm.tokenizer, ["toy_mc", "toy_ll"], include_path=tasks, batch_size=1,
                   bootstrap_iters=0, log_samples=True)
    # multiple choice: the choice with the highest log-likelihood
    lls = [[_loglik(lm.model, lm.tokenizer, q, " " + c)[0] for c in choices] for q, choices, _ in MC]
    acc = sum(max(range(3), key=lambda i: ll[i]) == a for ll, (_, _, a) in zip(lls, MC)) / len(MC)
    assert res["results"]["toy_mc"]["acc,none"] == acc
    for sample in res["samples"]["toy_mc"]:
        got = [r[0] for r in sample["filtered_resps"]]
        want = lls[sample["doc_id"]]
        assert all(math.isclose(g, w, rel_tol=1e-5) for g, w in zip(got, want)), (got, want)
    # loglikelihood (the target as the task writes it, with its leading space, as lambada's):
    # perplexity exp(-mean log-likelihood), acc = the continuation is the greedy one
    pairs = [_loglik(lm.model, lm.tokenizer, c, " " + t) for c, t in LL]
    ppl = math.exp(-sum(ll for ll, _ in pairs) / len(pairs))
    assert math.isclose(res["results"]["toy_ll"]["perplexity,none"], ppl, rel_tol=1e-5)
    assert res["results"]["toy_ll"]["acc,none"] == sum(g for _, g in pairs) / len(pairs)
    return res


def test_quantization_changes_the_scores(setup):
    folder, tasks = setup
    a = load_model(folder)
    b = load_model(folder)
    quantize_model(b.model, PTQConfig(weight="int4", act="int4"))
    ra = evaluate(a.model, a.tokenizer, ["toy_ll"], include_path=tasks, batch_size=2, bootstrap_iters=0)
    rb = evaluate(b.model, b.tokenizer, ["toy_ll"], include_path=tasks, batch_size=2, bootstrap_iters=0)
    assert ra["results"]["toy_ll"]["perplexity,none"] != rb["results"]["toy_ll"]["perplexity,none"]


def test_cli_runs_a_ptq_result_and_refuses_bad_input_before_loading(setup, tmp_path, monkeypatch):
    from floatlab.cli import app
    from floatlab.cli import inputs

    folder, tasks = setup
    q = tmp_path / "q"
    r = runner.invoke(app, ["ptq", "--model", str(folder), "--format", "int8", "--act-format", "int8",
                            "--window", "16", "--windows", "2", "--out", str(q)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["lm-eval", str(q), "--tasks", "toy_mc,toy_ll", "--include-path", str(tasks),
                            "--limit", "3", "--out", str(tmp_path / "res")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "res" / "results.json").read_text())
    assert rec["quantized"] and rec["ptq"]["act"]["format"] == "int8" and rec["limit"] == 3
    assert set(rec["results"]) == {"toy_mc", "toy_ll"} and "| toy_mc | acc" in r.output
    monkeypatch.setattr(inputs, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    r = runner.invoke(app, ["lm-eval", str(q), "--tasks", "toy_mcc", "--include-path", str(tasks),
                            "--out", str(tmp_path / "res")])
    assert r.exit_code == 2 and "--tasks: unknown lm-eval task 'toy_mcc'; did you mean 'toy_mc'" in r.output, r.output
    r = runner.invoke(app, ["lm-eval", "minilm", "--tasks", "toy_mc", "--include-path", str(tasks),
                            "--out", str(tmp_path / "res")])
    assert r.exit_code == 2 and "lm-eval evaluates causal language models" in r.output, r.output
    # an earlier results.json in --out: asked about (here: refused) after every other check, before loading
    from floatlab.ptq import io as ptq_io
    monkeypatch.setattr(ptq_io, "load_quantized", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    before = (tmp_path / "res" / "results.json").read_text()
    ok = ["lm-eval", str(q), "--tasks", "toy_mc", "--include-path", str(tasks), "--out", str(tmp_path / "res")]
    r = runner.invoke(app, ok)
    assert r.exit_code == 2 and r.output.startswith("error: ") and "earlier result (results.json)" in r.output
    assert "--overwrite" in r.output and (tmp_path / "res" / "results.json").read_text() == before, r.output
    r = runner.invoke(app, [*ok, "--overwrite"])
    assert isinstance(r.exception, AssertionError) and "model loaded" in str(r.exception), r.output
    with pytest.raises(LmEvalError, match="is not a folder of task YAML files"):
        evaluate(None, None, ["toy_mc"], include_path=tmp_path / "nope")
