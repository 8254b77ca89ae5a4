"""Memory that scales (issue 17 part 4): `floatlab ptq --blockwise` (the checkpoint read and
quantized one transformer block at a time) gives the whole-model result bit for bit; GPTQ
Hessians shared by the layers that read one input equal the per-layer ones; rotations are
rebuilt from their size instead of stored (and results saved with stored matrices still load);
what block-by-block PTQ cannot do is refused with a clear error. Tiny random models built here
(tests/tinymodels.py)."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'floatlab[models]')")
pytest.importorskip("accelerate", reason="lazy loading needs accelerate (pip install 'floatlab[models]')")

import floatlab  # noqa: E402
import tinymodels as tm  # noqa: E402
from floatlab.cli import app  # noqa: E402

runner = CliRunner()
TEXT = "\n\n".join(" ".join(tm.LINES[i:] + tm.LINES[:i]) for i in range(len(tm.LINES)))
SMALL = ["--windows", "4", "--window", "16", "--calib", "4"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("blockwise")
    for a in ("llama", "gpt2", "distilbert", "qwen2_moe"):
        tm.build(a, r / a)
    (r / "text.txt").write_text(TEXT * 2 + "\n")
    return r


def _ptq(root, out, arch, *args):
    """``floatlab ptq`` of the tiny ``arch`` (or a model folder) on the test text; its config.json."""
    data = ["--eval-data", str(root / "text.txt")]
    if "gptq" in " ".join(args) or "smoothquant" in " ".join(args):
        data += ["--calib-data", str(root / "text.txt")]
    model = arch if "/" in str(arch) else root / arch
    r = runner.invoke(app, ["ptq", "--model", str(model), *SMALL, *data, *args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    return json.loads((out / "config.json").read_text())


def _ptq_reproducible(root, out, arch, *args):
    """:func:`_ptq` in a fresh process with ``MKL_CBWR=AVX2`` on one thread: MKL's AVX-512 sgemm kernels (Intel
    CPUs) sum in an order that depends on the matrix shapes, so the whole-model and block-by-block
    runs can differ in a product's last bits and, with int8 activations, in a rounding decision
    (docs/workflow.md section 4); MKL reads the setting when it starts."""
    import os
    import subprocess
    import sys
    data = ["--eval-data", str(root / "text.txt"), "--calib-data", str(root / "text.txt")]
    env = {**os.environ, "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}   # one thread:
    # MKL splits a product over threads by its shape too
    r = subprocess.run([sys.executable, "-m", "floatlab.cli", "ptq", "--model", str(root / arch), *SMALL, *data,
                        *args, "--out", str(out)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads((out / "config.json").read_text())


def _tensors(folder, saved):
    from floatlab.ptq.io import weight_files
    out = {}
    for f in weight_files(saved):
        out.update(floatlab.load(folder / f))
    return out


def _same(a, b):
    """Two loaded tensor dicts equal bit for bit (QTensors: codes and scales, via their tensors)."""
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), k
        else:
            assert type(x) is type(y), k
            dx, dy = x.dequantize(), y.dequantize()
            assert torch.equal(dx.view(torch.int32), dy.view(torch.int32)), k


@pytest.mark.parametrize("arch,args", [
    ("llama", ["--format", "mxfp4", "--act-format", "e4m3", "--method", "rtn"]),
    ("llama", ["--format", "int4", "--group-size", "16", "--method", "gptq"]),
    ("llama", ["--format", "int8", "--act-format", "int8", "--method", "smoothquant+gptq",
               "--override", "*.down_proj=fp32"]),
    ("gpt2", ["--format", "nvfp4", "--method", "gptq"]),          # Conv1D stored transposed
])
def test_blockwise_equals_whole_model_bit_for_bit(root, tmp_path, arch, args):
    run = _ptq_reproducible if "--act-format" in args and "int8" in args else _ptq
    whole = run(root, tmp_path / "whole", arch, *args)
    block = run(root, tmp_path / "block", arch, *args, "--blockwise")
    assert block["blockwise"] is True and "weight_files" not in whole
    assert len(block["weight_files"]) == 2 + 1                     # one file per block, then the rest
    assert block["metric"] == whole["metric"]                      # perplexity equal as a float
    assert block["layers"] == whole["layers"] and block["ptq"] == whole["ptq"]
    assert block["data"] == whole["data"] and block["model_fingerprint"] == whole["model_fingerprint"]
    _same(_tensors(tmp_path / "whole", whole), _tensors(tmp_path / "block", block))


def test_eval_reproduces_a_blockwise_result_also_after_the_model_moved(root, tmp_path):
    src = tmp_path / "model"
    shutil.copytree(root / "llama", src)
    out = tmp_path / "q"
    saved = _ptq(root, out, src, "--format", "nvfp4", "--act-format", "nvfp4", "--method", "gptq",
                 "--blockwise")
    assert saved["model"] == str(src.resolve())
    r = runner.invoke(app, ["eval", str(out), "--eval-data", str(root / "text.txt")])
    assert r.exit_code == 0, r.output
    assert "reproduced exactly" in r.output
    # the source model moved: without --model an error says the result needs it, with it eval works
    moved = tmp_path / "moved"
    src.rename(moved)
    r = runner.invoke(app, ["eval", str(out), "--eval-data", str(root / "text.txt")])
    assert r.exit_code != 0 and "needs its source model" in r.output
    r = runner.invoke(app, ["eval", str(out), "--model", str(moved), "--eval-data", str(root / "text.txt")])
    assert r.exit_code == 0 and "reproduced exactly" in r.output, r.output
    # a missing block file is named
    (out / saved["weight_files"][1]).unlink()
    r = runner.invoke(app, ["eval", str(out), "--model", str(moved)])
    assert r.exit_code != 0 and saved["weight_files"][1] in r.output


@pytest.mark.parametrize("mode", [[], ["--blockwise"]], ids=["whole", "blockwise"])
def test_a_relative_model_path_is_recorded_absolute(root, tmp_path, monkeypatch, mode):
    """`floatlab ptq --model ./mine` records where the model is, not the relative name: `eval`
    from another folder finds it (it said "needs its source model mine ... does not exist")."""
    shutil.copytree(root / "llama", tmp_path / "mine")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["ptq", "--model", "./mine", *SMALL, "--eval-data", str(root / "text.txt"),
                            "--format", "int8", *mode, "--out", "q"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "q" / "config.json").read_text())
    assert saved["model"] == str((tmp_path / "mine").resolve())
    monkeypatch.chdir(tmp_path / "elsewhere")
    r = runner.invoke(app, ["eval", str(tmp_path / "q")])
    assert r.exit_code == 0 and "reproduced exactly" in r.output, r.output


def test_ptq_refuses_to_mix_a_blockwise_result_without_overwrite(root, tmp_path):
    out = tmp_path / "q"
    _ptq(root, out, "llama", "--format", "int8", "--blockwise")
    (out / "config.json").unlink()                          # only the block files are left
    r = runner.invoke(app, ["ptq", "--model", str(root / "llama"), *SMALL, "--format", "int8", "--out", str(out)])
    assert r.exit_code != 0 and "quantized-block-00000.safetensors" in r.output


@pytest.mark.parametrize("arch,args,needle", [
    ("llama", ["--method", "rotate+rtn"], "'rotate' rotates the embeddings and the LM head"),
    ("llama", ["--method", "lwc", "--format", "int2_asym_g64"], "'lwc' feeds every block the quantized outputs"),
    ("llama", ["--method", "ptq161", "--format", "ptq161"], "'ptq161' feeds every block"),
    ("distilbert", [], "block-by-block PTQ is for causal LMs"),
    ("qwen2_moe", [], "mixture-of-experts layers"),
    ("llama", ["--device", "cuda"], "--blockwise runs on the CPU" if torch.cuda.is_available() else "cuda"),
])
def test_blockwise_refuses_what_it_cannot_do(root, tmp_path, arch, args, needle):
    cmd = ["ptq", "--model", str(root / arch), *SMALL, "--format", "int8", *args, "--blockwise",
           "--out", str(tmp_path / "q")]
    r = runner.invoke(app, cmd)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert needle in " ".join(r.output.split()), r.output
    assert not (tmp_path / "q" / "config.json").exists()


def test_block_stream_drops_the_kv_cache():
    """A block runs several times on its captured inputs: a key/value cache passed along would
    grow with every run. The captured kwargs hold none, and running a block twice gives equal
    outputs."""
    from floatlab.models.loading import block_list
    from floatlab.ptq.blockwise import _capture, _run

    model = tm.model("gemma3_text")               # its attention writes into the cache it is given
    ids = torch.randint(4, tm.VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    _, blocks = block_list(model)
    stream = _capture(model, blocks[0], [{"input_ids": ids}])
    args, kwargs = stream[0]
    from transformers.cache_utils import Cache
    assert not any(isinstance(v, Cache) for v in kwargs.values())
    a, _ = _run(blocks[0], stream)
    b, _ = _run(blocks[0], stream)
    assert torch.equal(a[0][0][0], b[0][0][0])
    # and the first block's output is the model's own hidden state after it
    ref = model(input_ids=ids, output_hidden_states=True).hidden_states[1]
    assert torch.equal(a[0][0][0], ref)


def test_blockwise_frees_each_block_even_where_the_caller_holds_its_linears(root, tmp_path):
    """Only one block's weights in memory: after quantize_blockwise no block weight is left, also
    in the nn.Linear modules a caller took from the model beforehand (floatlab ptq does, to check
    the layers: they held every block's weights, 0.8x the fp32 model of SmolLM2 at the end), and
    the placeholder left for each block holds no activations."""
    from floatlab.models.lazy import load_lazy
    from floatlab.models.loading import block_list, linear_layers
    from floatlab.ptq import PTQConfig
    from floatlab.ptq.blockwise import quantize_blockwise

    lm = load_lazy(str(root / "llama"), log=lambda *a: None)
    held = linear_layers(lm.model)
    assert held and all(m.weight.is_meta for m in held.values())
    _, blocks = block_list(lm.model)
    calib = [{"input_ids": torch.randint(7, tm.VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))}]
    wins = torch.randint(7, tm.VOCAB, (2, 17), generator=torch.Generator().manual_seed(2))
    quantize_blockwise(lm, PTQConfig(weight="int4", method="gptq"), calib, wins, tmp_path / "q")
    assert all(p.is_meta for m in held.values() for p in m.parameters())
    for b in blocks:
        assert not any(isinstance(v, torch.Tensor) or (isinstance(v, tuple) and any(
            isinstance(x, torch.Tensor) for x in v)) for v in vars(b).values())


# ---- shared GPTQ Hessians ------------------------------------------------------------------------
def test_shared_hessians_equal_collect_hessians_and_share_storage():
    from floatlab.models.loading import linear_layers
    from floatlab.ptq.gptq import collect_hessians
    from floatlab.ptq.hessians import hessian_bytes, shared_hessians

    model = tm.model("llama")
    g = torch.Generator().manual_seed(1)
    calib = [{"input_ids": torch.randint(4, tm.VOCAB, (2, 12), generator=g)},
             {"input_ids": torch.randint(4, tm.VOCAB, (3, 7), generator=g),
              "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 7])}]
    layers = linear_layers(model)
    ref = collect_hessians(model, layers, calib)
    got = shared_hessians(model, layers, calib)
    assert list(got) == list(ref)
    for n in ref:
        assert torch.equal(got[n], ref[n]), n
    for i in range(2):
        p = f"model.layers.{i}"
        assert got[f"{p}.self_attn.q_proj"] is got[f"{p}.self_attn.k_proj"] is got[f"{p}.self_attn.v_proj"]
        assert got[f"{p}.mlp.gate_proj"] is got[f"{p}.mlp.up_proj"]
        assert got[f"{p}.self_attn.o_proj"] is not got[f"{p}.self_attn.q_proj"]
    # 4 distinct inputs per block (qkv, o, gate/up, down) instead of 7
    full = sum(h.numel() * 4 for h in ref.values())
    assert hessian_bytes(got) == 2 * (3 * 64 * 64 + 128 * 128) * 4 < full


def test_shared_hessians_refuse_layers_that_stop_sharing():
    """Layers that read one tensor in one batch and different tensors in another cannot share."""
    from floatlab.ptq.hessians import shared_hessians

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

        def forward(self, x, split=False):
            return self.a(x) + self.b(x.clone() if split else x)

    m = Two()
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="use floatlab.ptq.gptq.collect_hessians"):
        shared_hessians(m, {"a": m.a, "b": m.b}, [{"x": x}, {"x": x, "split": True}])


# ---- rotations: rebuilt, not stored ----------------------------------------------------------------
def test_rotation_is_not_stored_and_old_results_with_stored_matrices_load(root, tmp_path):
    from floatlab.ptq.io import load_quantized
    from floatlab.ptq.rotation import OnlineRotation, hadamard

    out = tmp_path / "rot"
    saved = _ptq(root, out, "llama", "--format", "int8", "--method", "rotate+rtn")
    tensors = floatlab.load(out / "quantized.safetensors")
    assert not [k for k in tensors if k.endswith(".matrix")]
    lm, _, _ = load_quantized(out, log=lambda *a: None)
    rots = {n: m for n, m in lm.model.named_modules() if isinstance(m, OnlineRotation)}
    assert sorted({m.n for m in rots.values()}) == [64, 128] and len(rots) == 4     # o_proj, down_proj per block
    for a in rots.values():                   # one tensor per size, shared by every rotation of that size
        assert all(a.matrix is b.matrix for b in rots.values() if b.n == a.n)
        assert torch.equal(a.matrix, hadamard(a.n).to(torch.float32))
    # a result saved before: every online rotation's dense matrix stored beside the weights
    names = list(rots)
    old = dict(tensors)
    for n, m in rots.items():
        old[f"{n}.matrix"] = hadamard(m.n).to(torch.float32).clone()
    floatlab.save(out / "quantized.safetensors", old)
    r = runner.invoke(app, ["eval", str(out), "--eval-data", str(root / "text.txt")])
    assert r.exit_code == 0 and "reproduced exactly" in r.output, r.output
    assert saved["metric"]["perplexity"] > 0
    # a stored matrix that is not the Hadamard of its size is refused, not silently replaced
    old[f"{names[0]}.matrix"] = old[f"{names[0]}.matrix"].flip(0)
    floatlab.save(out / "quantized.safetensors", old)
    with pytest.raises(ValueError, match="differs from the Hadamard matrix"):
        load_quantized(out, log=lambda *a: None)
