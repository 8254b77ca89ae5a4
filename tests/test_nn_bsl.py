"""Binary stochastic learning (floatlab.nn.bsl): each binary signal and the whole rule in
expectation against their definitions (exact expectations by enumeration), the integer pulse
counts against a per-sample loop over the same draws, the device grid and pulse updates, the
rules' refusals, and a check that the rule learns."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn import functional as F

from floatlab.nn import bsl


def _within(mean, expected, var, n, k=5.0):
    """Every sample mean within k standard errors (the variance of one draw is ``var``)."""
    se = (var / n).sqrt()
    return bool(((mean - expected).abs() <= k * se + 1e-9).all())


def test_bernoulli_spikes_and_binary_derivatives_in_expectation():
    """E[h_b] = sigmoid(z); the gradient passed back is sign(g) * d_b with E[d_b] = 4 s (1 - s)."""
    n = 40_000
    z = torch.tensor([-3.0, -0.5, 0.0, 0.7, 2.5]).repeat(n, 1).requires_grad_()
    h = bsl.bernoulli_sigmoid(z, torch.Generator().manual_seed(0))
    assert set(h.unique().tolist()) == {0.0, 1.0}
    g = torch.tensor([-0.3, -0.3, 2.0, -1e-6, 5.0]).repeat(n, 1)
    h.backward(g)
    s = torch.sigmoid(z[0].detach())
    d = 4 * s * (1 - s)
    assert _within(h.detach().mean(0), s, s * (1 - s), n)
    assert _within(z.grad.mean(0), torch.sign(g[0]) * d, d * (1 - d), n)
    assert set(z.grad.unique().tolist()) == {-1.0, 0.0, 1.0}      # signed binary, whatever |g|


def test_binary_output_error_in_expectation_and_refusals():
    n = 40_000
    z = torch.tensor([[-2.0, 0.0, 1.5]]).repeat(n, 1)
    y = torch.tensor([1]).repeat(n)
    e = bsl.binary_output_error(z, y, torch.Generator().manual_seed(1))
    assert set(e.unique().tolist()) == {-1.0, 0.0, 1.0}
    s = torch.sigmoid(z[0])
    assert _within(e.mean(0), s - torch.tensor([0.0, 1.0, 0.0]), s * (1 - s), n)
    with pytest.raises(ValueError, match="needs z"):
        bsl.binary_output_error(z[0], y)
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 3\)"):
        bsl.binary_output_error(z[:2], torch.tensor([0, 3]))


def _tiny_net(seed=0):
    net = bsl.BSLNet((2,), 2, 2, rule="bsl", seed=seed)
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[1.5, -0.8], [-0.4, 0.9]]))
        net.fc1.bias.copy_(torch.tensor([0.2, -0.3]))
        net.fc2.weight.copy_(torch.tensor([[0.7, -1.1], [-0.5, 1.3]]))
        net.fc2.bias.copy_(torch.tensor([-0.1, 0.25]))
    return net


def _expected_pulses(net, x, y):
    """E[G] for one sample by enumerating every binary outcome (inputs, hidden spikes,
    derivatives, output spikes) with its probability: the rule as the module docstring defines it."""
    W1, b1, W2, b2 = (p.detach().double() for p in (net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias))
    x = x.double()
    t = F.one_hot(torch.tensor(y), 2).double()
    out = [torch.zeros_like(p, dtype=torch.float64) for p in (W1, b1, W2, b2)]

    def prob(bits, p):
        return float(torch.prod(torch.where(torch.tensor(bits, dtype=torch.float64) == 1, p, 1 - p)))

    for xb in itertools.product((0, 1), repeat=2):
        pxb = prob(xb, x)
        xbt = torch.tensor(xb, dtype=torch.float64)
        s1 = torch.sigmoid(W1 @ xbt + b1)
        for hb in itertools.product((0, 1), repeat=2):
            phb = prob(hb, s1)
            hbt = torch.tensor(hb, dtype=torch.float64)
            s2 = torch.sigmoid(W2 @ hbt + b2)
            for db in itertools.product((0, 1), repeat=2):
                pdb = prob(db, 4 * s1 * (1 - s1))
                dbt = torch.tensor(db, dtype=torch.float64)
                for ob in itertools.product((0, 1), repeat=2):
                    w = pxb * phb * pdb * prob(ob, s2)
                    e = torch.tensor(ob, dtype=torch.float64) - t
                    delta = torch.sign(W2.T @ e) * dbt
                    for acc, g in zip(out, (torch.outer(delta, xbt), delta, torch.outer(e, hbt), e)):
                        acc += w * g
    return out


def test_pulse_counts_match_the_rule_in_expectation():
    """The batch's .grad after training_loss().backward() is the summed pulse count; over many
    copies of one sample its mean is the exact expectation of the rule (by enumeration)."""
    n = 60_000
    net = _tiny_net()
    for x, y in ((torch.tensor([0.9, 0.3]), 1), (torch.tensor([0.2, 0.6]), 0)):
        net.zero_grad()
        net.training_loss(x.repeat(n, 1), torch.tensor([y]).repeat(n)).backward()
        expected = _expected_pulses(net, x, y)
        for p, e in zip(net.parameters(), expected):
            assert torch.equal(p.grad, p.grad.round())                # integer counts
            assert float(p.grad.abs().max()) <= n
            # each count is a sum of n draws in {-1, 0, 1}: variance of one <= 1
            assert _within(p.grad.double() / n, e, torch.ones_like(e), n, k=5.0), (p.grad / n, e)


def test_pulse_counts_equal_a_per_sample_loop_over_the_same_draws():
    """The vectorized rule equals an obviously-correct per-sample loop that replays the
    generator's uniforms in the order of the forward pass (inputs, hidden spikes, derivatives,
    output spikes)."""
    torch.manual_seed(0)
    net = bsl.BSLNet((5,), 4, 3, rule="bsl", seed=11)
    x, y = torch.rand(6, 5), torch.tensor([0, 2, 1, 1, 0, 2])
    gen = torch.Generator()
    gen.set_state(net.generator.get_state())
    ux = torch.rand((6, 5), generator=gen)
    uh = torch.rand((6, 4), generator=gen)
    ud = torch.rand((6, 4), generator=gen)
    uo = torch.rand((6, 3), generator=gen)
    net.training_loss(x, y).backward()
    W1, b1, W2, b2 = (p.detach() for p in net.parameters())
    G = [torch.zeros_like(p) for p in (W1, b1, W2, b2)]
    for i in range(6):
        xb = [1.0 if ux[i, j] < x[i, j] else 0.0 for j in range(5)]
        z1 = [float(b1[k] + sum(W1[k, j] * xb[j] for j in range(5))) for k in range(4)]
        s1 = [float(torch.sigmoid(torch.tensor(v))) for v in z1]
        hb = [1.0 if uh[i, k] < s1[k] else 0.0 for k in range(4)]
        db = [1.0 if ud[i, k] < 4 * s1[k] * (1 - s1[k]) else 0.0 for k in range(4)]
        z2 = [float(b2[c] + sum(W2[c, k] * hb[k] for k in range(4))) for c in range(3)]
        ob = [1.0 if uo[i, c] < float(torch.sigmoid(torch.tensor(z2[c]))) else 0.0 for c in range(3)]
        e = [ob[c] - (1.0 if c == int(y[i]) else 0.0) for c in range(3)]
        for k in range(4):
            back = sum(float(W2[c, k]) * e[c] for c in range(3))
            delta = (1.0 if back > 0 else -1.0 if back < 0 else 0.0) * db[k]
            G[1][k] += delta
            for j in range(5):
                G[0][k, j] += delta * xb[j]
        for c in range(3):
            G[3][c] += e[c]
            for k in range(4):
                G[2][c, k] += e[c] * hb[k]
    for p, g in zip(net.parameters(), G):
        assert torch.equal(p.grad, g), (p.grad, g)


def test_device_grid_and_pulse_updates():
    grid = bsl.DeviceGrid((1.0,), levels=5)                       # levels -1, -0.5, 0, 0.5, 1
    assert torch.equal(grid.snap(torch.tensor([-3.0, -0.3, 0.2, 0.3, 0.74, 9.0]), 0),
                       torch.tensor([-1.0, -0.5, 0.0, 0.5, 0.5, 1.0]))
    # rate 1: a weight moves by exactly G levels (against G), clamped at the rails
    w = torch.nn.Parameter(torch.tensor([0.0, 0.0, 0.5, -0.5]))
    opt = bsl.FixedStepUpdate([w], grid)
    w.grad = torch.tensor([1.0, -2.0, -3.0, 0.0])
    opt.step()
    assert torch.equal(w.detach(), torch.tensor([-0.5, 1.0, 1.0, -0.5]))
    # rate < 1: rate * G rounded stochastically, E[k] = rate * G
    grid = bsl.DeviceGrid((100.0,), levels=201)                   # one level = 1.0
    w = torch.nn.Parameter(torch.zeros(200_000))
    opt = bsl.FixedStepUpdate([w], grid, rate=0.3, seed=3)
    w.grad = torch.full_like(w, 7.0)                              # 0.3 * 7 = 2.1 levels on average
    opt.step()
    moved = -w.detach()
    assert set(moved.unique().tolist()) == {2.0, 3.0}
    assert _within(moved.mean(), torch.tensor(2.1), torch.tensor(0.1 * 0.9), w.numel())
    # the Manhattan rule: one level against the sign, whatever the size
    w = torch.nn.Parameter(torch.tensor([0.0, 3.0, -2.0]))
    opt = bsl.FixedStepUpdate([w], grid, mode="sign")
    w.grad = torch.tensor([-1e-6, 40.0, 0.0])
    opt.step()
    assert torch.equal(w.detach(), torch.tensor([1.0, 2.0, -2.0]))


def test_refusals():
    with pytest.raises(ValueError, match="levels must be an integer >= 2"):
        bsl.DeviceGrid((1.0,), levels=1)
    with pytest.raises(ValueError, match="positive and finite"):
        bsl.DeviceGrid((0.0,))
    with pytest.raises(ValueError, match="unknown BSL rule 'adam'"):
        bsl.BSLNet((4,), 3, 2, rule="adam")
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="mode must be"):
        bsl.FixedStepUpdate([w], bsl.DeviceGrid((1.0,)), mode="adam")
    with pytest.raises(ValueError, match=r"rate must be in \(0, 1\]"):
        bsl.FixedStepUpdate([w], bsl.DeviceGrid((1.0,)), rate=0.0)
    with pytest.raises(ValueError, match="2 ranges for 1 parameters"):
        bsl.FixedStepUpdate([w], bsl.DeviceGrid((1.0, 1.0)))
    with pytest.raises(ValueError, match="nn.Linear weights and biases"):
        bsl.DeviceGrid.for_model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)))


def test_optimizer_state_round_trips():
    net, opt = bsl.build_rule("bsl", (4,), 3, 2, seed=0)
    opt.param_groups[0]["rate"] = 0.5
    state = opt.state_dict()
    _, other = bsl.build_rule("bsl", (4,), 3, 2, seed=9)
    other.load_state_dict(state)
    assert other.param_groups[0]["rate"] == 0.5
    assert torch.equal(torch.rand(5, generator=other.generator), torch.rand(5, generator=opt.generator))


@pytest.mark.parametrize("rule", ["bsl", "sign", "sgd"])
def test_each_rule_learns_the_digits(rule):
    """Every rule learns scikit-learn's 8x8 digits well above chance (10 %) in 300 batches."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    tr, te = perm[:1400], perm[1400:]
    net, opt = bsl.build_rule(rule, (64,), 64, 10, seed=0, lr=0.1)
    for step in range(300):
        idx = tr[torch.randint(0, len(tr), (32,), generator=g)]
        loss = net.training_loss(x[idx], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(x[te]).argmax(1) == y[te]).float().mean())
    assert acc > 0.75, acc
