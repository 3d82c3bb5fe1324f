import math

import pytest
import torch

from mbdpo.math import RunningMeanStd, RunningScale, TwoHot, squashed_gaussian, symexp, symlog
from mbdpo.nn import Ensemble, SimNorm, mish
from mbdpo.noise import Noise


def test_symlog_symexp_inverse():
    x = torch.linspace(-1000, 1000, 2001)
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-5, atol=1e-4)


def test_two_hot_round_trip():
    th = TwoHot(101, -10, 10)
    x = torch.tensor([-500.0, -3.3, -0.2, 0.0, 0.7, 1.0, 42.0, 1234.5])
    enc = th.encode(x)
    assert enc.shape == (8, 101)
    assert torch.allclose(enc.sum(-1), torch.ones(8))
    assert ((enc > 0).sum(-1) <= 2).all()
    # logits whose softmax is the two-hot vector decode back to the value
    dec = th.decode(torch.log(enc + 1e-30))
    assert torch.allclose(dec, x, rtol=1e-4, atol=1e-4), (dec, x)


def test_two_hot_of_nan_is_nan_not_an_index_error():
    """A diverged value (NaN) must reach the loss as NaN, where the trainer's check names it,
    not crash the encoding with an out-of-range index."""
    th = TwoHot(101, -10, 10)
    enc = th.encode(torch.tensor([float("nan"), 1.0, float("inf")]))
    assert enc.shape == (3, 101) and torch.isnan(enc[0]).any() and not torch.isnan(enc[1]).any()
    assert float(enc[1].sum()) == pytest.approx(1.0)
    assert torch.isnan(th.soft_ce(torch.zeros(1, 101), torch.tensor([float("nan")]))).all()


def test_two_hot_clamps_outside_range():
    th = TwoHot(101, -10, 10)
    big = torch.tensor([1e9])
    assert th.encode(big)[0, -1] == 1.0


def test_soft_ce_minimal_at_target():
    th = TwoHot(101, -10, 10)
    target = torch.tensor([3.0])
    good = torch.log(th.encode(target) + 1e-9)
    bad = torch.log(th.encode(torch.tensor([-3.0])) + 1e-9)
    assert th.soft_ce(good, target) < th.soft_ce(bad, target)


def test_simnorm_groups_sum_to_one():
    x = torch.randn(4, 32)
    y = SimNorm(8)(x).view(4, 4, 8)
    assert torch.allclose(y.sum(-1), torch.ones(4, 4), atol=1e-6)


def test_fast_mish_matches_torch_and_gradcheck():
    x = torch.linspace(-30, 30, 4001)
    assert torch.allclose(mish(x.clone()), torch.nn.functional.mish(x), atol=2e-6)
    xd = torch.randn(64, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(mish, (xd,))


def test_squashed_gaussian_bounds_and_mask():
    mean, log_std = torch.randn(1, 1000, 3) * 3, torch.randn(1, 1000, 3)
    a, logp, mu = squashed_gaussian(mean, log_std, -10, 2, Noise([0]))
    assert a.abs().max() <= 1 and mu.abs().max() <= 1 and torch.isfinite(logp).all()
    mask = torch.tensor([1.0, 1.0, 0.0])
    a, logp, mu = squashed_gaussian(mean, log_std, -10, 2, Noise([0]), mask=mask)
    assert (a[..., 2] == 0).all() and (mu[..., 2] == 0).all()


def test_ensemble_subset_equals_full_members():
    ens = Ensemble(2, 5, 7, [16, 16], 3)
    for w in ens.weights:  # non-zero last layer so outputs differ by member
        torch.nn.init.normal_(w)
    ens.eval()
    x = torch.randn(2, 10, 7)
    full = ens(x)
    idx = torch.tensor([[3, 1], [0, 4]])  # members of seed 0, of seed 1
    sub = ens(x, idx)
    assert full.shape == (2, 5, 10, 3) and sub.shape == (2, 2, 10, 3)
    torch.testing.assert_close(sub[0], full[0, [3, 1]], atol=1e-6, rtol=0)
    torch.testing.assert_close(sub[1], full[1, [0, 4]], atol=1e-6, rtol=0)
    assert not torch.allclose(full[0, 0], full[0, 1])
    # seed 1's members are its own networks: the same as a one-seed ensemble with its weights
    one = Ensemble(1, 5, 7, [16, 16], 3).eval()
    with torch.no_grad():
        for mine, theirs in zip(one.parameters(), ens.parameters()):
            mine.copy_(theirs[1:2])
    torch.testing.assert_close(one(x[1:2])[0], full[1], atol=1e-6, rtol=0)


def test_running_scale_and_meanstd():
    rs = RunningScale(tau=1.0)
    rs.update(torch.linspace(0, 100, 1001)[None])
    assert math.isclose(rs.value.item(), 90.0, rel_tol=1e-3)
    assert math.isclose(rs(torch.tensor([90.0])).item(), 1.0, rel_tol=1e-3)
    st = RunningMeanStd(momentum=0.0, clip=5)
    st.update(torch.tensor([[1.0, 3.0]]))
    assert math.isclose(st.mean.item(), 2.0) and math.isclose(st.std.item(), 1.0)
    assert st(torch.tensor([[100.0]])).item() == 5.0


def test_running_statistics_are_kept_per_seed():
    """Two seeds, two batches: each seed's scale and energy statistics are those of its own
    batch, as a one-seed statistic fed that batch alone gives."""
    rs, st = RunningScale(tau=1.0, seeds=2), RunningMeanStd(momentum=0.0, clip=5, seeds=2)
    rs.update(torch.stack([torch.linspace(0, 100, 1001), torch.linspace(0, 10, 1001)]))
    assert torch.allclose(rs.value, torch.tensor([90.0, 9.0]), rtol=1e-3)
    st.update(torch.tensor([[1.0, 3.0], [-4.0, 4.0]]))
    assert st.mean.tolist() == [2.0, 0.0] and st.std.tolist() == [1.0, 4.0]
    assert st(torch.tensor([[4.0], [4.0]])).flatten().tolist() == [2.0, 1.0]


def test_running_scale_averages_clamped_ranges():
    """TD-MPC2's order: each range is clamped to >= 1, then smoothed. Ranges of 0.2 leave the
    scale at 1; a range of 9 then moves it by tau * (9 - 1)."""
    rs = RunningScale(tau=0.5)
    for _ in range(3):
        rs.update(torch.linspace(0, 0.2 / 0.9, 1001)[None])  # 5th-95th percentile range 0.2
    assert math.isclose(rs.value.item(), 1.0, rel_tol=1e-6)
    rs.update(torch.linspace(0, 10, 1001)[None])  # range 9
    assert math.isclose(rs.value.item(), 5.0, rel_tol=1e-4)


def test_running_meanstd_smooths_the_std_not_the_variance():
    """The published code smooths the batch std: from 1, batch stds 1 and 3 with momentum 0.5
    give 2 (smoothing the variance would give sqrt(5) = 2.236)."""
    st = RunningMeanStd(momentum=0.5, clip=5)
    st.update(torch.tensor([[-1.0, 1.0]]))  # std 1, mean 0
    st.update(torch.tensor([[-3.0, 3.0]]))  # std 3
    assert math.isclose(st.std.item(), 2.0, rel_tol=1e-6)
    assert math.isclose(st(torch.tensor([[4.5]])).item(), 2.25, rel_tol=1e-6)


def test_running_meanstd_loads_a_checkpoint_that_kept_the_variance():
    st = RunningMeanStd(momentum=0.99, clip=5)
    st.load_state_dict({"mean": torch.tensor(0.5), "var": torch.tensor(4.0)})
    assert st.std.tolist() == [2.0] and st.mean.tolist() == [0.5]


def test_squashed_gaussian_log_prob_is_the_gaussian_before_tanh():
    """The log-prob is that of the pre-tanh Gaussian sample summed over the used dims: no
    tanh Jacobian, so saturated dimensions (mean 8) count like any other."""
    mean = torch.tensor([[8.0, -0.3, 0.5], [0.1, -8.0, 2.0]])
    raw = torch.tensor([[0.2, -1.0, 0.0], [1.5, 0.3, -0.4]])
    lo, hi = -10.0, 2.0
    std = (lo + 0.5 * (hi - lo) * (torch.tanh(raw) + 1)).exp()
    for mask in (None, torch.tensor([1.0, 1.0, 0.0])):
        torch.manual_seed(0)  # one seed draws from the default generator
        a, logp, _ = squashed_gaussian(mean[None], raw[None], lo, hi, Noise([0]), mask=mask)
        a, logp = a[0], logp[0]
        torch.manual_seed(0)
        u = mean + torch.randn_like(mean) * std  # the same pre-tanh sample
        per_dim = torch.distributions.Normal(mean, std).log_prob(u)
        used = torch.ones(3) if mask is None else mask
        torch.testing.assert_close(logp.squeeze(-1), (per_dim * used).sum(-1), rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(a, torch.tanh(u) * used)


def test_quantiles_match_torch_quantile():
    from mbdpo.math import quantiles
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 256, 1000):
        x = torch.randn(n, generator=g) * 30
        ours = torch.stack(quantiles(x, (0.0, 0.05, 0.5, 0.95, 1.0)))
        ref = torch.quantile(x, torch.tensor([0.0, 0.05, 0.5, 0.95, 1.0]))
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)
