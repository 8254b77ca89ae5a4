"""Per-layer bit policies (floatlab.train.bit_policy): the search never scores or returns a policy
over budget and is reproducible with a seed; a policy's recipe puts each layer's weights on a grid
of at most 2^bits values; shared weights switch policies and the proxy score restores batch norms."""

from __future__ import annotations

import pytest
import torch

from floatlab.train import bit_policy as bp

CNN_SIZES = {"conv1": 72, "conv2": 1152, "fc1": 50176, "fc2": 640}   # the small preset's CNN


@pytest.mark.parametrize("budget_bits", [1, 2, 3, 4])
def test_search_stays_within_budget_and_is_deterministic(budget_bits):
    budget = bp.policy_cost(CNN_SIZES, (budget_bits,) * 4)
    seen = []

    def score(policy):                      # a toy proxy: more bits help, the small layers most
        assert bp.policy_cost(CNN_SIZES, policy) <= budget, f"{policy} over budget was scored"
        seen.append(policy)
        return sum(w * b ** 0.5 for w, b in zip((3.0, 2.0, 1.0, 2.5), policy))

    r = bp.search_policy(score, CNN_SIZES, budget_bits, population=8, generations=5, seed=3)
    if budget_bits == 1:                    # nothing else fits: the uniform binary policy, scored once
        assert r.policy == r.uniform == (1, 1, 1, 1) and seen == [r.policy]
        return
    assert r.cost == bp.policy_cost(CNN_SIZES, r.policy) <= r.budget == budget
    assert r.uniform == (budget_bits,) * 4 and r.uniform in r.scored
    assert r.score >= r.uniform_score and len(seen) == len(set(seen)) == len(r.scored)
    again = bp.search_policy(score, CNN_SIZES, budget_bits, population=8, generations=5, seed=3)
    assert (again.policy, again.history, list(again.scored)) == (r.policy, r.history, list(r.scored))


def test_bad_input():
    with pytest.raises(ValueError, match=r"bit width 7 is not one of \(1, 2, 3, 4, 5, 6, 8\)"):
        bp.weight_format(7)
    with pytest.raises(ValueError, match="--budget-bits must be one of"):
        bp.search_policy(lambda p: 0.0, CNN_SIZES, 7)
    with pytest.raises(ValueError, match=r"one bit width per layer \(4\), got 3"):
        bp.policy_recipe(CNN_SIZES, (2, 2, 2))


def _levels_per_channel(w: torch.Tensor) -> int:
    return max(len(row.unique()) for row in w.reshape(w.shape[0], -1))


@pytest.fixture
def digits_cnn(monkeypatch):
    monkeypatch.setenv("FLOATLAB_FAST", "0")          # the plain path: no kernel compilation in a test
    pytest.importorskip("sklearn")
    from floatlab.train.image_run import get_image_preset, load_data
    p = get_image_preset("smoke")
    data = load_data("digits", p)
    return data, p.model_config("cnn", data)


def test_policy_recipe_quantizes_each_layer_to_its_width(digits_cnn):
    from floatlab.nn.functional import Gemm, quantize_operand
    data, cfg = digits_cnn
    shared = bp.SharedWeights(cfg, seed=0)
    policy = (3, 1, 2, 8)
    r = bp.policy_recipe(shared.sizes, policy)
    assert r.name == "w3-1-2-8" and set(r.to_dict()) >= {"rules", "default"}
    shared.set_policy(policy)
    for (name, m), bits in zip(shared.layers.items(), policy):
        assert m.spec == r.spec_for(name) == bp.weight_spec(bits)
        w = m.weight.detach().reshape(m.weight.shape[0], -1)
        q = quantize_operand(w.T.contiguous(), m.spec.gemm(Gemm("fprop")).b, 1, m.qstate, Gemm("fprop"))
        assert _levels_per_channel(q.T) <= (2 ** bits if bits > 2 else bits + 1), (name, bits)
        if bits >= 3:                                        # one per-tensor grid of 2^bits values
            assert len(q.unique()) <= 2 ** bits
        assert not torch.equal(q.T, w)                       # it did quantize


def test_shared_weights_and_proxy_score(digits_cnn):
    data, cfg = digits_cnn
    shared = bp.SharedWeights(cfg, seed=0)
    losses = bp.train_shared(shared, data, 6, 32, 3e-3, seed=0)
    assert len(losses) == 6 and all(l == l for l in losses)
    bn = [m for m in shared.model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    before = bn.running_mean.clone()
    val = (data.test_x[:64], data.test_y[:64])
    a = bp.score_policy(shared, (2, 2, 2, 2), data, val, calib_batches=2, batch=32)
    b = bp.score_policy(shared, (8, 8, 8, 8), data, val, calib_batches=2, batch=32)
    assert torch.equal(bn.running_mean, before)                     # restored
    assert a == bp.score_policy(shared, (2, 2, 2, 2), data, val, calib_batches=2, batch=32)
    assert 0.0 <= a <= 1.0 and 0.0 <= b <= 1.0


def test_the_command_end_to_end_on_digits(tmp_path, monkeypatch):
    """The documented script on the 8x8 digits: search, recipes written, both policies trained."""
    monkeypatch.setenv("FLOATLAB_FAST", "0")
    pytest.importorskip("sklearn")
    import json

    from floatlab.nn.recipe import Recipe
    r = bp.main(["--task", "digits", "--preset", "smoke", "--budget-bits", "3", "--shared-steps", "8",
                 "--val-start", "1000", "--val", "200", "--population", "4", "--generations", "1",
                 "--seeds", "1", "--out", str(tmp_path)])
    s = r["search"]
    assert s["cost_bits"] <= s["budget_bits"] == bp.policy_cost(s["layers"], (3,) * len(s["layers"]))
    saved = json.loads((tmp_path / "policy_search.json").read_text())
    assert saved["search"]["policy"] == s["policy"] and set(saved["trained"]) <= {"searched", "uniform"}
    assert "uniform" in saved["trained"] and len(saved["trained"]["uniform"]["test_accuracy_per_seed"]) == 1
    found = Recipe.load(tmp_path / "searched.json")
    assert found == bp.policy_recipe(s["layers"], s["policy"], found.name)
    with pytest.raises(SystemExit):
        bp.main(["--task", "digits", "--budget-bits", "7", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
