import math

import torch

from mbdpo.math import RunningMeanStd, RunningScale, TwoHot, squashed_gaussian, symexp, symlog
from mbdpo.nn import Ensemble, SimNorm, mish


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
    mean, log_std = torch.randn(1000, 3) * 3, torch.randn(1000, 3)
    a, logp, mu = squashed_gaussian(mean, log_std, -10, 2)
    assert a.abs().max() <= 1 and mu.abs().max() <= 1 and torch.isfinite(logp).all()
    mask = torch.tensor([1.0, 1.0, 0.0])
    a, logp, mu = squashed_gaussian(mean, log_std, -10, 2, mask=mask)
    assert (a[:, 2] == 0).all() and (mu[:, 2] == 0).all()


def test_ensemble_subset_equals_full_members():
    ens = Ensemble(5, 7, [16, 16], 3)
    for w in ens.weights:  # non-zero last layer so outputs differ by member
        torch.nn.init.normal_(w)
    ens.eval()
    x = torch.randn(10, 7)
    full = ens(x)
    idx = torch.tensor([3, 1])
    sub = ens(x, idx)
    assert full.shape == (5, 10, 3)
    assert torch.allclose(sub, full[idx], atol=1e-6)
    assert not torch.allclose(full[0], full[1])


def test_running_scale_and_meanstd():
    rs = RunningScale(tau=1.0)
    rs.update(torch.linspace(0, 100, 1001))
    assert math.isclose(rs.value.item(), 90.0, rel_tol=1e-3)
    assert math.isclose(rs(torch.tensor(90.0)).item(), 1.0, rel_tol=1e-3)
    st = RunningMeanStd(momentum=0.0, clip=5)
    st.update(torch.tensor([1.0, 3.0]))
    assert math.isclose(st.mean.item(), 2.0) and math.isclose(st.var.item(), 1.0)
    assert st(torch.tensor([100.0])).item() == 5.0


def test_quantiles_match_torch_quantile():
    from mbdpo.math import quantiles
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 256, 1000):
        x = torch.randn(n, generator=g) * 30
        ours = torch.stack(quantiles(x, (0.0, 0.05, 0.5, 0.95, 1.0)))
        ref = torch.quantile(x, torch.tensor([0.0, 0.05, 0.5, 0.95, 1.0]))
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)
