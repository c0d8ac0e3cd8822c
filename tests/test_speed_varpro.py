"""The faster pieces of the variable-projection delay fit (issue 13, item 5: speed).

The node search takes the nodes whose unconstrained optimum is feasible first and solves
only the others whose lower bound beats them on the box's edges; the delayed AIF is
computed in one pass; the model's three recursions run in one loop. Each must give what
the direct computation gives.
"""

import numpy as np
import pytest

from phantomdce import kinetics as K
from phantomdce.aif import plasma_aif
from phantomdce.fit import _lm, _varpro
from phantomdce.fit import nlls as N

T = np.arange(100) * 3.0
CA = plasma_aif("parker", T, bat=15.0, hct=0.42)


def _curves(n, seed):
    rng = np.random.default_rng(seed)
    ct = K.extended_tofts(T, CA, ktrans=rng.uniform(0.0, 0.5, n), ve=rng.uniform(0.05, 0.6, n),
                          vp=rng.uniform(0.0, 0.1, n))  # fmt: skip
    ct[: n // 4] = K.extended_tofts(T, CA, ktrans=0.0, ve=0.2, vp=0.05)  # plasma only
    ct[n // 4 : n // 3] *= -1.0  # edges of the box everywhere
    return ct + rng.normal(0.0, 0.02, ct.shape)


@pytest.mark.parametrize("k_stride", [1, 2])
def test_search_finds_the_least_cost_node_of_each_delay(k_stride):
    """Per delay, the best node equals the brute-force minimum of the exact 2 x 2 box
    problem over every searched node (box_qp, checked against scipy elsewhere)."""
    names = N._names("extended_tofts", True)
    lo, hi = N._bounds("extended_tofts", names)
    keps = _varpro.kep_grid(1, lo, hi, _varpro.KEP_PER_DECADE_DELAY)
    delays = np.array([-4.9, 0.1, 2.6, 11.1])
    tabs = _varpro.tables(1, T, CA, keps, delays, lo, hi, True)
    f, c, prod, box = tabs
    nk = keps.size
    for y in _curves(40, 3):
        syy = float(y @ y)
        per_delay = np.full((delays.size, 4), np.inf)
        _varpro._search(y, tabs, syy, per_delay, 0, delays.size, 1, np.empty(nk), k_stride,
                        np.empty(nk))  # fmt: skip
        for d in range(delays.size):
            costs = np.full(nk, np.inf)
            for j in range(0, nk, k_stride):
                if box[j, 0] <= box[j, 1]:
                    costs[j] = _varpro.box_qp(prod[d, j, 0], prod[d, j, 1], prod[d, j, 2],
                                              f[d, j] @ y, c[d] @ y, syy, *box[j])[2]  # fmt: skip
            assert per_delay[d, 0] == pytest.approx(costs.min(), rel=1e-9, abs=1e-12)
            j = int(per_delay[d, 3])
            a, b = per_delay[d, 1:3]
            assert box[j, 0] <= a <= box[j, 1] and box[j, 2] <= b <= box[j, 3]
            assert np.sum((y - a * f[d, j] - b * c[d]) ** 2) == pytest.approx(
                per_delay[d, 0], rel=1e-9, abs=1e-12)


def test_one_pass_model_equals_separate_recursions():
    """The delayed extended Tofts model and Jacobian (three recursions in one loop) equal
    F and G of the delayed AIF and F of its slope computed one by one."""
    rng = np.random.default_rng(4)
    n = T.size
    for _ in range(50):
        kt, ve, vp, delay = rng.uniform(1e-4, 0.01), rng.uniform(0.05, 0.9), rng.uniform(0, 0.1), \
            rng.uniform(-10, 30)  # fmt: skip
        model, jac = _lm.model_and_jacobian(1, np.array([kt, ve, vp, delay]), T, CA, True)
        c = np.empty(n)
        slope = np.empty(n)
        _lm._shift(T, CA, delay, c, slope)
        f, g, fs = np.empty(n), np.empty(n), np.empty(n)
        _lm._conv_fg(T, c, kt / ve, f, g)
        _lm._conv_f(T, slope, kt / ve, fs)
        np.testing.assert_allclose(model, kt * f + vp * c, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(jac[:, 3], -(kt * fs + vp * slope), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("even", [True, False])
def test_segment_basis_gives_the_shifted_model(even):
    """Within a segment between kinks the polish takes the delayed AIF from a basis (its
    value at the segment's lower end and its constant slope): the model and Jacobian equal
    those from the shifted AIF, also with an AIF that does not start at 0 (a jump at the
    kinks) and uneven frames, and on the lower kink itself."""
    rng = np.random.default_rng(9)
    t = np.arange(40) * 2.5 if even else np.cumsum(rng.uniform(2.0, 3.5, 40))
    ca = np.interp(t, T, CA) + 0.3  # ca[0] != 0
    kinks = _varpro.kinks(t, -10.0, 30.0)
    edges = np.r_[-10.0, kinks, 30.0]
    ws = _lm.workspace(t.size, 4)
    n = t.size
    w = np.empty((9, n))
    for s_lo, s_hi in zip(edges[:-1], edges[1:], strict=True):
        if s_hi - s_lo < 1e-9:
            continue
        base, sl = np.empty(n), np.empty(n)
        _lm.segment_basis(t, ca, s_lo, s_hi, base, sl)
        _lm.use_segment(base, sl, s_lo, ws)
        for delay in np.r_[s_lo, s_lo + (s_hi - s_lo) * rng.uniform(0, 1, 4)]:
            theta = np.array([0.004, 0.3, 0.05, delay])
            m1, j1, m2, j2 = np.empty(n), np.empty((4, n)), np.empty(n), np.empty((4, n))
            _lm._model_jac_seg(1, theta, t, ca, True, ws[0], ws[6], m1, j1)
            _lm._model_jac(1, theta, t, ca, True, w, m2, j2)
            np.testing.assert_allclose(m1, m2, rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(j1, j2, rtol=1e-10, atol=1e-12)
        _lm.clear_segment(ws)
        assert ws[6][0] == 0.0


def test_block_products_equal_dot_products_in_any_slot():
    """The coarse search's products, computed BLOCK voxels at a time, equal the dot products;
    a voxel's products are bitwise the same whatever slot of a block it takes and whatever
    shares the block (a padded last block included), so no result depends on chunking."""
    rng = np.random.default_rng(11)
    n = T.size
    rows = rng.normal(size=(30, n))  # an even count, as coarse_search_data pads
    ys = rng.normal(size=(9, n))
    pb = np.empty((_varpro.BLOCK, rows.shape[0]))
    _varpro._block_products(rows, ys[: _varpro.BLOCK].copy(), pb)
    np.testing.assert_allclose(pb, ys[: _varpro.BLOCK] @ rows.T, rtol=1e-12, atol=1e-12)
    first = pb[0].copy()
    for slot in range(_varpro.BLOCK):
        yb = np.zeros((_varpro.BLOCK, n))
        yb[slot] = ys[0]
        if slot:
            yb[0] = ys[8]
        _varpro._block_products(rows, yb, pb)
        np.testing.assert_array_equal(pb[slot], first)


def test_coarse_search_equals_the_direct_search():
    """The coarse search from the block products and the contiguous node data gives, at
    every coarse delay, the node the direct search (_search) finds, to rounding."""
    names = N._names("extended_tofts", True)
    lo, hi = N._bounds("extended_tofts", names)
    keps = _varpro.kep_grid(1, lo, hi, _varpro.KEP_PER_DECADE_DELAY)
    delays = N.DELAY_GRID
    tabs = _varpro.tables(1, T, CA, keps, delays, lo, hi, True)
    nk = keps.size
    coarse = np.arange(_varpro.DELAY_COARSE // 2, delays.size, _varpro.DELAY_COARSE)
    for k_stride in (1, 2):
        rows, nodes = _varpro.coarse_search_data(tabs, k_stride)
        ys = _curves(4 * _varpro.BLOCK, 5)
        for b0 in range(0, ys.shape[0], _varpro.BLOCK):
            pb = np.empty((_varpro.BLOCK, rows.shape[0]))
            _varpro._block_products(rows, ys[b0 : b0 + _varpro.BLOCK].copy(), pb)
            for v in range(_varpro.BLOCK):
                y = ys[b0 + v]
                syy = float(y @ y)
                got = np.full((delays.size, 4), np.inf)
                want = np.full((delays.size, 4), np.inf)
                _varpro._search_coarse(pb[v], tabs, nodes, syy, got, k_stride, np.empty(nk),
                                       np.empty(nk), np.empty(nk))  # fmt: skip
                _varpro._search(y, tabs, syy, want, coarse[0], delays.size,
                                _varpro.DELAY_COARSE, np.empty(nk), k_stride,
                                np.empty(nk))  # fmt: skip
                np.testing.assert_allclose(got[coarse, 0], want[coarse, 0], rtol=1e-10)
                assert np.all(got[coarse, 3] == want[coarse, 3])
                np.testing.assert_allclose(got[coarse, 1:3], want[coarse, 1:3], rtol=1e-8,
                                           atol=1e-12)  # fmt: skip
                d = _varpro._argmin_searched(got, 0, 0, 1)
                assert d == _varpro._argmin_cost(want)


def test_segment_bases_are_each_segments_basis():
    """The bases computed once a fit are bitwise each segment's own basis, between the kinks
    (or bounds) that end it, and use_segment puts them where the polish reads them."""
    t = np.arange(40) * 2.5
    ca = np.interp(t, T, CA)
    kinks = _varpro.kinks(t, -10.0, 30.0)
    bases = _varpro.segment_bases(t, ca, kinks, -10.0, 30.0)
    edges = np.r_[-10.0, kinks, 30.0]
    ws = _lm.workspace(t.size, 4)
    for m, (s_lo, s_hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        base, sl = np.empty(t.size), np.empty(t.size)
        _lm.segment_basis(t, ca, s_lo, s_hi, base, sl)
        np.testing.assert_array_equal(bases[m, 0], base)
        np.testing.assert_array_equal(bases[m, 1], sl)
        _lm.use_segment(bases[m, 0], bases[m, 1], s_lo, ws)
        np.testing.assert_array_equal(ws[0][11], base)
        np.testing.assert_array_equal(ws[0][12], sl)
        assert ws[6][0] == 1.0 and ws[6][1] == s_lo


def test_paired_refinement_is_each_refinement_alone():
    """Two nodes refined side by side (their recursions in one loop) give bitwise the starts
    and costs each gives alone; so do two recursions run in one loop."""
    n = T.size
    f1, f2, g = np.empty(n), np.empty(n), np.empty(n)
    c2 = np.roll(CA, 3)
    _lm._conv_f_pair(T, CA, 0.01, f1, c2, 0.3, f2)
    _lm._conv_f(T, CA, 0.01, g)
    np.testing.assert_array_equal(f1, g)
    _lm._conv_f(T, c2, 0.3, g)
    np.testing.assert_array_equal(f2, g)
    names = N._names("extended_tofts", True)
    lo, hi = N._bounds("extended_tofts", names)
    keps = _varpro.kep_grid(1, lo, hi, _varpro.KEP_PER_DECADE_DELAY)
    delays = N.DELAY_GRID
    tabs = _varpro.tables(1, T, CA, keps, delays, lo, hi, True)
    for y in _curves(30, 8):
        syy = float(y @ y)
        per_delay = np.full((delays.size, 4), np.inf)
        _varpro._search(y, tabs, syy, per_delay, 0, delays.size, 1, np.empty(keps.size), 1,
                        np.empty(keps.size))  # fmt: skip
        order = np.argsort(per_delay[:, 0], kind="stable")[:2]
        if not np.isfinite(per_delay[order, 0]).all():
            continue
        nodes = np.column_stack([per_delay[order], order])
        starts, costs = np.empty((2, 4)), np.empty(2)
        _varpro._refined_pair(1, T, y, keps, delays, tabs, lo, hi, syy, nodes, np.empty(n),
                              np.empty(n), starts, costs, np.empty((2, 15)))  # fmt: skip
        for c in range(2):
            alone = np.empty(4)
            cost = _varpro._refined_start(1, T, y, keps, delays, tabs, lo, hi, True, syy,
                                          nodes[c], np.empty(n), alone,
                                          np.empty(15))  # fmt: skip
            assert cost == costs[c]
            np.testing.assert_array_equal(alone, starts[c])
