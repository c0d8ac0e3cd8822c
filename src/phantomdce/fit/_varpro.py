"""Variable-projection kernels of the NLLS fitter for the Tofts-family models (private).

In the Tofts, extended Tofts and Patlak models every parameter but the rate
``kep = Ktrans / ve`` (and a fitted arterial delay) enters linearly::

    ct = Ktrans * F(kep) + vp * ca,    F(kep) = int ca(u) exp(-kep (t - u)) du

so for a fixed ``kep`` (and delay) the best ``Ktrans`` and ``vp`` within their bounds are
the solution of a 2 x 2 box-constrained quadratic problem, solved exactly. The fit
(:func:`fit_serial`, :func:`fit_parallel`) therefore searches a grid of rates (and
delays) with the linear parameters solved exactly at each node, refines the best node's
rate by Brent's method on this reduced cost (one recursion and one 2 x 2 solve a step),
and polishes the result with the bounded Levenberg-Marquardt of :mod:`phantomdce.fit._lm`
on the full parameter vector, so the optimum, the convergence flags and the normal matrix
are those of that fitter (same model, same bounds, same stopping rules). The search is
global over the grid, so the optimum is the old multi-start fit's or a lower one.

A fitted delay shifts the AIF by linear interpolation, so the model has a kink in the
delay wherever a delayed frame meets an AIF sample (:func:`kinks`) and is smooth between
two kinks. With evenly spaced frames (:func:`segmented`) the polish runs with the delay
bounded to one such segment at a time (:func:`_fit_segments`): within a segment the
Levenberg-Marquardt converges in a few steps, and an optimum on a kink is reached as a
bound instead of by many short steps across it.

``F`` is computed by the same recursion as the Levenberg-Marquardt model
(:func:`phantomdce.fit._lm._conv_fg`: exact for the sampled, piecewise-linear AIF, shifted
by the delay with :func:`phantomdce.fit._lm._shift`), once per grid node for all voxels
(:func:`tables`); per voxel a node costs one dot product and the 2 x 2 solve. With a
delay, the coarse search's dot products are taken for :data:`BLOCK` voxels at a time from
a contiguous copy of the rows it reads (:func:`coarse_search_data`, :func:`_block_products`), and
the two best nodes are refined side by side (:func:`_refined_pair`), so that neither the
memory nor the recursions' latency limits the search. The block products are summed in
another order than a voxel's own (:func:`_dot`), so a node's cost can differ in its last
bits (about 4e-15 relative): the fits' costs are the same to that rounding.

The bounds of the linear parameters at a node: ``Ktrans`` in its box and, through
``ve = Ktrans / kep`` in ``[ve_lo, ve_hi]``, in ``[ve_lo kep, ve_hi kep]``; ``vp`` in its
box (zero for Tofts). Patlak has no rate: one node, ``F(0) = int ca``.

Internal units as in :mod:`phantomdce.fit._lm`: s and /s.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from phantomdce.fit import _lm

#: Model codes (of :mod:`phantomdce.fit._lm`) fitted by variable projection.
VARPRO_CODES = (0, 1, 2)
#: Rate grid: nodes per decade of kep (with a fitted delay: per delay node), and its lowest
#: nonzero node (/s). The highest node is the largest kep the bounds allow
#: (Ktrans_max / ve_min); ``kep = 0`` is a node too.
KEP_PER_DECADE = 4
KEP_PER_DECADE_DELAY = 3
KEP_MIN = 1e-6
#: ve of the start at the node kep = 0 (Ktrans = 0 there, so ve is free).
VE_AT_ZERO_RATE = 0.2
#: Refinement of the best node in ln kep: at most this many steps, to this tolerance; with a
#: fitted delay at most REFINE_ITER_DELAY steps (the polish moves the delay, and kep with
#: it, from the grid's delay node anyway: a finer kep there buys no polish step).
REFINE_ITER = 8
REFINE_ITER_DELAY = 3
REFINE_TOL = 1e-5
#: With a fitted delay, the delay nodes are searched every DELAY_COARSE-th node first,
#: then every node within DELAY_WINDOW nodes of the best of those; the DELAY_REFINED best
#: of these are refined in kep and the best refined one is polished.
DELAY_COARSE = 8
DELAY_WINDOW = 4
DELAY_REFINED = 2
#: A polished delay closer to a kink (a delay where a delayed frame meets an AIF sample)
#: than KINK_NEAR times the spacing of the kinks there is polished again from the kink's
#: other side, at least KINK_STEP times that spacing away from it; the better fit is kept.
KINK_NEAR = 0.25
KINK_STEP = 0.05
#: Kinks at least SEGMENT_MIN s apart (evenly spaced frames of 2 s or more): the delay fit
#: is polished within one segment between kinks at a time (:func:`_fit_segments`), where
#: the cost is smooth; a refined start in another segment is polished too if its cost is
#: within SIDE_MARGIN (relative) of the first polish's. Its search takes every
#: COARSE_KEP_STRIDE-th rate at the coarse delays and every FINE_STRIDE-th delay of the
#: window (the polish within a segment does the rest).
SEGMENT_MIN = 2.0
SIDE_MARGIN = 0.05
COARSE_KEP_STRIDE = 2
FINE_STRIDE = 4
#: The products of the coarse search (every DELAY_COARSE-th delay) are computed for BLOCK
#: voxels at a time from a contiguous copy of their rows of the tables
#: (:func:`coarse_search_data`, :func:`_block_products`): read once a block instead of once a
#: voxel, the rows no longer limit the search by the memory's speed. Every voxel's products
#: are computed by the same code whatever block it is in (a short last block is padded).
BLOCK = 4
#: A polish within a segment stops this far (relative to the segment) below its upper kink
#: (:func:`_polish_in`): on a kink the model's delay derivative is that of the segment above.
KINK_EPS = 1e-9


def kep_grid(code: int, lo: np.ndarray, hi: np.ndarray, per_decade: float) -> np.ndarray:
    """Grid of rates kep (/s) for the model ``code`` within the bounds (internal units)."""
    if code == 2:
        return np.zeros(1)
    kmax = hi[0] / lo[1]
    n = int(math.ceil(per_decade * math.log10(kmax / KEP_MIN))) + 1
    return np.concatenate([[0.0], np.geomspace(KEP_MIN, kmax, n)])


def kinks(t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Delays (s) within ``[lo, hi]`` at which a delayed frame meets an AIF sample.

    The delayed AIF (:func:`phantomdce.fit._lm._shift`) is linear in the delay between
    them; the cost can have a local minimum on either side of one.
    """
    d = np.unique(np.round((t[:, None] - t[None, :]).ravel(), 9))
    return d[(d >= lo) & (d <= hi)]


@njit(cache=True)
def tables(code, t, ca, keps, delays, lo, hi, fit_delay):
    """Curves and products shared by every voxel at each (delay, kep) node.

    Returns ``f`` (n_delay, n_kep, n_t): F of the AIF delayed by each delay at each rate;
    ``c`` (n_delay, n_t): the delayed AIF; ``prod`` (n_delay, n_kep, 6): ``F.F``, ``F.c``,
    ``c.c`` and the inverse of the normal matrix ``[[F.F, F.c], [F.c, c.c]]`` (entries
    ff, fc, cc; all NaN where it is singular, and for Tofts, which has no vp); ``box``
    (n_kep, 4): the bounds ``(alo, ahi, blo, bhi)`` of (Ktrans, vp) at each rate.
    """
    n = t.shape[0]
    nd = delays.shape[0]
    nk = keps.shape[0]
    f = np.empty((nd, nk, n))
    c = np.empty((nd, n))
    prod = np.empty((nd, nk, 6))
    slope = np.empty(n)
    for d in range(nd):
        if fit_delay:
            _lm._shift(t, ca, delays[d], c[d], slope)
        else:
            c[d] = ca
        scc = 0.0
        for i in range(n):
            scc += c[d, i] * c[d, i]
        # two rates at a time: their recursions and sums run side by side (the same results)
        for j in range(0, nk - 1, 2):
            f0 = f[d, j]
            f1 = f[d, j + 1]
            _lm._conv_f_pair(t, c[d], keps[j], f0, c[d], keps[j + 1], f1)
            sff0 = 0.0
            sfc0 = 0.0
            sff1 = 0.0
            sfc1 = 0.0
            for i in range(n):
                sff0 += f0[i] * f0[i]
                sfc0 += f0[i] * c[d, i]
                sff1 += f1[i] * f1[i]
                sfc1 += f1[i] * c[d, i]
            _products(code, prod[d, j], sff0, sfc0, scc)
            _products(code, prod[d, j + 1], sff1, sfc1, scc)
        if nk % 2:
            fj = f[d, nk - 1]
            _lm._conv_f(t, c[d], keps[nk - 1], fj)
            sff = 0.0
            sfc = 0.0
            for i in range(n):
                sff += fj[i] * fj[i]
                sfc += fj[i] * c[d, i]
            _products(code, prod[d, nk - 1], sff, sfc, scc)
    box = np.empty((nk, 4))
    for j in range(nk):
        alo, ahi, blo, bhi = _linear_bounds(code, keps[j], lo, hi)
        box[j, 0] = alo
        box[j, 1] = ahi
        box[j, 2] = blo
        box[j, 3] = bhi
    return f, c, prod, box


@njit(cache=True, inline="always")
def _products(code, out, sff, sfc, scc):
    """A node's ``F.F``, ``F.c``, ``c.c`` and inverse normal matrix into out (:func:`tables`)."""
    det = sff * scc - sfc * sfc
    out[0] = sff
    out[1] = sfc
    out[2] = scc
    if code != 0 and det > 1e-12 * sff * scc:
        out[3] = scc / det
        out[4] = -sfc / det
        out[5] = sff / det
    else:
        out[3:] = np.nan


@njit(cache=True, fastmath=True)
def _dot(f, d, j, y):
    """``f[d, j] . y`` reassociated freely (ranks nodes; not the final cost), no view."""
    s = 0.0
    for i in range(y.shape[0]):
        s += f[d, j, i] * y[i]
    return s


@njit(cache=True, fastmath=True)
def _matvec(f, d, y, out, k_stride):
    """``out[j] = f[d, j] . y`` for every ``k_stride``-th rate j, as :func:`_dot`."""
    for j in range(0, f.shape[1], k_stride):
        s = 0.0
        for i in range(y.shape[0]):
            s += f[d, j, i] * y[i]
        out[j] = s


@njit(cache=True, fastmath=True)
def _dot_c(c, d, y):
    """``c[d] . y`` as :func:`_dot`."""
    s = 0.0
    for i in range(y.shape[0]):
        s += c[d, i] * y[i]
    return s


@njit(cache=True, inline="always")
def _clip(x, lo, hi):
    return min(max(x, lo), hi)


@njit(cache=True, inline="always")
def _cost(a, b, syy, sfy, scy, sff, sfc, scc):
    return syy - 2.0 * (a * sfy + b * scy) + a * a * sff + 2.0 * a * b * sfc + b * b * scc


@njit(cache=True)
def box_qp(sff, sfc, scc, sfy, scy, syy, alo, ahi, blo, bhi):
    """Minimise ``||y - a f - b c||^2`` over ``a in [alo, ahi]``, ``b in [blo, bhi]``.

    From the products ``f.f, f.c, c.c, f.y, c.y, y.y``. Exact: the unconstrained
    minimiser if it is feasible, else the best of the four edges, each minimised exactly
    (the problem is convex, so its constrained minimiser lies on an edge). Returns
    ``(a, b, cost)``.
    """
    det = sff * scc - sfc * sfc
    if det > 1e-12 * sff * scc:
        a = (sfy * scc - scy * sfc) / det
        b = (scy * sff - sfy * sfc) / det
        if alo <= a <= ahi and blo <= b <= bhi:
            return a, b, _cost(a, b, syy, sfy, scy, sff, sfc, scc)
    return _edges(sff, sfc, scc, sfy, scy, syy, alo, ahi, blo, bhi)


@njit(cache=True)
def _edges(sff, sfc, scc, sfy, scy, syy, alo, ahi, blo, bhi):
    """The best of the four edges of the box, each minimised exactly."""
    best_a = alo
    best_b = blo
    best = np.inf
    for edge in range(4):
        if edge < 2:
            a = alo if edge == 0 else ahi
            b = _clip((scy - a * sfc) / scc, blo, bhi) if scc > 0.0 else _clip(0.0, blo, bhi)
        else:
            b = blo if edge == 2 else bhi
            a = _clip((sfy - b * sfc) / sff, alo, ahi) if sff > 0.0 else _clip(0.0, alo, ahi)
        cost = _cost(a, b, syy, sfy, scy, sff, sfc, scc)
        if cost < best:
            best = cost
            best_a = a
            best_b = b
    return best_a, best_b, best


@njit(cache=True, inline="always")
def _linear_bounds(code, k, lo, hi):
    """Bounds of (a, b) = (Ktrans, vp) at the rate k: ``(alo, ahi, blo, bhi)``."""
    if code == 2:
        return lo[0], hi[0], lo[1], hi[1]
    alo = max(lo[0], lo[1] * k)
    ahi = min(hi[0], hi[1] * k)
    if code == 0:
        return alo, ahi, 0.0, 0.0
    return alo, ahi, lo[2], hi[2]


@njit(cache=True, inline="always")
def _node(code, k, prod, d, j, sfy, scy, syy, lo, hi, best):
    """Best (a, b, cost) at node (d, j), from its products ``prod[d, j]`` (:func:`tables`).

    A node whose unconstrained optimum is infeasible and whose unconstrained cost (a lower
    bound) is not below ``best`` is not searched further: cost ``inf``.
    """
    alo, ahi, blo, bhi = _linear_bounds(code, k, lo, hi)
    if alo > ahi:
        return 0.0, 0.0, np.inf
    i_ff = prod[d, j, 3]
    if code != 0 and i_ff == i_ff:
        a = i_ff * sfy + prod[d, j, 4] * scy
        b = prod[d, j, 4] * sfy + prod[d, j, 5] * scy
        lower = syy - (a * sfy + b * scy)
        if alo <= a <= ahi and blo <= b <= bhi:
            return a, b, lower
        if lower >= best:
            return 0.0, 0.0, np.inf
    return _edges(prod[d, j, 0], prod[d, j, 1], prod[d, j, 2], sfy, scy, syy, alo, ahi, blo, bhi)


@njit(cache=True)
def _reduced(code, t, c, y, u, syy, scy, scc, lo, hi, fbuf):
    """Reduced cost at the rate ``exp(u)``: ``(a, b, cost)`` with a, b solved exactly."""
    k = math.exp(u)
    _lm._conv_f(t, c, k, fbuf)
    return _reduced_from(code, t, c, y, k, syy, scy, scc, lo, hi, fbuf)


@njit(cache=True)
def _reduced_pair(code, t, c1, c2, y, u1, u2, syy, scy1, scy2, scc1, scc2, lo, hi, fbuf, gbuf):
    """:func:`_reduced` of two (curve, rate) pairs, their recursions run side by side.

    Returns ``(a1, b1, cost1, a2, b2, cost2)``, each equal to :func:`_reduced`'s.
    """
    k1 = math.exp(u1)
    k2 = math.exp(u2)
    _lm._conv_f_pair(t, c1, k1, fbuf, c2, k2, gbuf)
    a1, b1, f1 = _reduced_from(code, t, c1, y, k1, syy, scy1, scc1, lo, hi, fbuf)
    a2, b2, f2 = _reduced_from(code, t, c2, y, k2, syy, scy2, scc2, lo, hi, gbuf)
    return a1, b1, f1, a2, b2, f2


@njit(cache=True, fastmath={"contract", "reassoc"})
def _reduced_from(code, t, c, y, k, syy, scy, scc, lo, hi, fbuf):
    """:func:`_reduced` from the recursion's result ``fbuf`` at the rate ``k``."""
    sff = 0.0
    sfc = 0.0
    sfy = 0.0
    for i in range(t.shape[0]):
        sff += fbuf[i] * fbuf[i]
        sfc += fbuf[i] * c[i]
        sfy += fbuf[i] * y[i]
    alo, ahi, blo, bhi = _linear_bounds(code, k, lo, hi)
    if alo > ahi:
        return 0.0, 0.0, np.inf
    return box_qp(sff, sfc, scc, sfy, scy, syy, alo, ahi, blo, bhi)


@njit(cache=True)
def _search(y, tabs, syy, per_delay, d0, d1, stride, sfy, k_stride, low):
    """The nodes at delay indices ``d0, d0 + stride, ...`` below ``d1`` of one voxel.

    Every ``k_stride``-th rate is searched; :func:`_nodes` says how. ``sfy`` (n_kep) and
    ``low`` (n_kep) are scratch.
    """
    f, c, prod, box = tabs
    for d in range(d0, d1, stride):
        _matvec(f, d, y, sfy, k_stride)
        _nodes(tabs, syy, per_delay, d, _dot_c(c, d, y), sfy, k_stride, low)


@njit(cache=True)
def _search_coarse(prow, tabs, nodes, syy, per_delay, k_stride, sfy, low, cbuf):
    """:func:`_search` of every :data:`DELAY_COARSE`-th delay from its products ``prow``.

    ``prow`` is one voxel's row of :func:`_block_products` over the rows of
    :func:`coarse_search_data`, ``nodes`` its node data; the nodes are
    taken as :func:`_nodes` takes them, from these contiguous arrays (a loop the compiler
    vectorises). ``sfy``, ``low``, ``cbuf`` (n_kep) are scratch.
    """
    f, c, prod, box = tabs
    nd = f.shape[0]
    nk = f.shape[1]
    nj = len(range(0, nk, k_stride))
    m = 0
    for d in range(DELAY_COARSE // 2, nd, DELAY_COARSE):
        r = m * (nj + 1)
        k0 = m * nj
        scy = prow[r]
        lmin = np.inf
        for q in range(nj):
            s = prow[r + 1 + q]
            k = k0 + q
            a = nodes[0, k] * s + nodes[1, k] * scy
            b = nodes[1, k] * s + nodes[2, k] * scy
            cost = syy - (a * s + b * scy)
            ok = (nodes[3, k] <= a) & (a <= nodes[4, k]) & (nodes[5, k] <= b) & (b <= nodes[6, k])
            cbuf[q] = cost if ok else np.inf
            # the lower bound of an infeasible node; -inf where the normal matrix is singular
            lq = np.inf if ok else (cost if nodes[0, k] == nodes[0, k] else -np.inf)
            low[q * k_stride] = lq
            if lq < lmin:  # a NaN lower bound (a non-finite curve) is skipped, as in _nodes
                lmin = lq
            sfy[q * k_stride] = s
        dbest = np.inf
        qbest = -1
        for q in range(nj):
            if cbuf[q] < dbest:
                dbest = cbuf[q]
                qbest = q
        per_delay[d, 0] = dbest
        if qbest >= 0:
            s = prow[r + 1 + qbest]
            k = k0 + qbest
            per_delay[d, 1] = nodes[0, k] * s + nodes[1, k] * scy
            per_delay[d, 2] = nodes[1, k] * s + nodes[2, k] * scy
            per_delay[d, 3] = qbest * k_stride
        if lmin < dbest:  # some node's lower bound beats the best: solve it on the edges
            _edge_nodes(tabs, syy, per_delay, d, scy, sfy, k_stride, low, dbest)
        m += 1


@njit(cache=True)
def _search_window(y, tabs, syy, per_delay, d_best, w0, w1, fine, sfy, low, prow, k_stride):
    """:func:`_search` of every ``fine``-th delay of the window ``w0 <= d < w1``.

    The window spans :data:`DELAY_WINDOW` delays either side of ``d_best`` (within the
    grid); every rate is searched. ``d_best`` is the best delay of :func:`_search_coarse` (whose
    products are ``prow``, taken at every ``k_stride``-th rate): its products at those
    rates are taken from ``prow``, not computed again.
    """
    f, c, prod, box = tabs
    nk = f.shape[1]
    nj = len(range(0, nk, k_stride))
    h = DELAY_COARSE // 2
    coarse = d_best >= h and (d_best - h) % DELAY_COARSE == 0
    for d in range(w0, w1, fine):
        if coarse and d == d_best:
            r = (d - h) // DELAY_COARSE * (nj + 1)
            scy = prow[r]
            for j in range(nk):
                sfy[j] = prow[r + 1 + j // k_stride] if j % k_stride == 0 else _dot(f, d, j, y)
        else:
            scy = _dot_c(c, d, y)
            _matvec(f, d, y, sfy, 1)
        _nodes(tabs, syy, per_delay, d, scy, sfy, 1, low)


@njit(cache=True)
def _nodes(tabs, syy, per_delay, d, scy, sfy, k_stride, low):
    """The best node of one voxel at delay index ``d``, from its products ``c[d].y``, ``f[d].y``.

    The best (cost, Ktrans, vp, kep index) of every ``k_stride``-th rate is written into
    ``per_delay[d]`` (cost inf where no node is feasible). The nodes whose unconstrained
    optimum is feasible are taken first (their cost is the unconstrained one); of the
    others, only those whose unconstrained cost (a lower bound of their cost) is below the
    best of all so far at their delay are solved on the box's edges, so few are. ``low``
    (n_kep) is scratch.
    """
    f, c, prod, box = tabs
    nk = f.shape[1]
    dbest = np.inf
    lmin = np.inf  # the least lower bound of the nodes left for the edges
    per_delay[d, 0] = np.inf
    for j in range(0, nk, k_stride):
        low[j] = -np.inf  # solved on the edges unless pruned
        i_ff = prod[d, j, 3]
        if i_ff != i_ff:
            lmin = -np.inf
        else:
            s = sfy[j]
            i_fc = prod[d, j, 4]
            a = i_ff * s + i_fc * scy
            b = i_fc * s + prod[d, j, 5] * scy
            cost = syy - (a * s + b * scy)
            if box[j, 0] <= a <= box[j, 1] and box[j, 2] <= b <= box[j, 3]:
                low[j] = np.nan  # feasible: done
                if cost < dbest:
                    dbest = cost
                    _record(per_delay, d, cost, a, b, j)
            else:
                low[j] = cost
                if cost < lmin:
                    lmin = cost
    if lmin < dbest:
        _edge_nodes(tabs, syy, per_delay, d, scy, sfy, k_stride, low, dbest)


@njit(cache=True, inline="always")
def _record(per_delay, d, cost, a, b, j):
    """Write a delay's best node so far: its cost, Ktrans, vp and kep index."""
    per_delay[d, 0] = cost
    per_delay[d, 1] = a
    per_delay[d, 2] = b
    per_delay[d, 3] = j


@njit(cache=True)
def _edge_nodes(tabs, syy, per_delay, d, scy, sfy, k_stride, low, dbest):
    """The second pass of :func:`_nodes`: nodes whose lower bound ``low`` beats ``dbest``."""
    f, c, prod, box = tabs
    for j in range(0, f.shape[1], k_stride):
        alo = box[j, 0]
        ahi = box[j, 1]
        if not (low[j] < dbest) or alo > ahi:
            continue  # done, infeasible, or its lower bound is not below the best
        a, b, cost = _edges(prod[d, j, 0], prod[d, j, 1], prod[d, j, 2], sfy[j], scy, syy,
                            alo, ahi, box[j, 2], box[j, 3])  # fmt: skip
        if cost < dbest:
            dbest = cost
            _record(per_delay, d, cost, a, b, j)


@njit(cache=True)
def coarse_search_data(tabs, k_stride):
    """What the coarse search reads, copied contiguous: ``(rows, nodes)``.

    ``rows`` (n_rows, n_t): for every :data:`DELAY_COARSE`-th delay d (from
    ``DELAY_COARSE // 2``) the delayed AIF ``c[d]``, then ``f[d, j]`` for every
    ``k_stride``-th rate j; a zero row pads the count to an even number
    (:func:`_block_products` takes two rows at a time). ``nodes`` (7, n_nodes): per node, in
    the same order, the inverse normal matrix's entries ff, fc, cc (:func:`tables`) and the
    box of (Ktrans, vp) ``alo, ahi, blo, bhi``.
    """
    f, c, prod, box = tabs
    nd = f.shape[0]
    nk = f.shape[1]
    n_d = len(range(DELAY_COARSE // 2, nd, DELAY_COARSE))
    nj = len(range(0, nk, k_stride))
    n_rows = n_d * (1 + nj)
    rows = np.zeros((n_rows + n_rows % 2, f.shape[2]))
    nodes = np.empty((7, n_d * nj))
    r = 0
    k = 0
    for d in range(DELAY_COARSE // 2, nd, DELAY_COARSE):
        rows[r] = c[d]
        r += 1
        for j in range(0, nk, k_stride):
            rows[r] = f[d, j]
            r += 1
            for q in range(3):
                nodes[q, k] = prod[d, j, 3 + q]
            for q in range(4):
                nodes[3 + q, k] = box[j, q]
            k += 1
    return rows, nodes


@njit(cache=True, fastmath=True)
def _block_products(rows, yb, pb):
    """``pb[v, r] = rows[r] . yb[v]`` for the :data:`BLOCK` voxels of ``yb`` (BLOCK, n_t).

    Two rows and four voxels at a time: each value read serves four or two products, so
    the products run at the speed of the arithmetic, not of the memory. Reassociated freely,
    in another order than :func:`_dot`'s (they differ in the last bits): they rank nodes,
    they are not the final cost.
    """
    n = rows.shape[1]
    for r in range(0, rows.shape[0], 2):
        s00 = 0.0
        s01 = 0.0
        s02 = 0.0
        s03 = 0.0
        s10 = 0.0
        s11 = 0.0
        s12 = 0.0
        s13 = 0.0
        for i in range(n):
            f0 = rows[r, i]
            f1 = rows[r + 1, i]
            y0 = yb[0, i]
            y1 = yb[1, i]
            y2 = yb[2, i]
            y3 = yb[3, i]
            s00 += f0 * y0
            s01 += f0 * y1
            s02 += f0 * y2
            s03 += f0 * y3
            s10 += f1 * y0
            s11 += f1 * y1
            s12 += f1 * y2
            s13 += f1 * y3
        pb[0, r] = s00
        pb[1, r] = s01
        pb[2, r] = s02
        pb[3, r] = s03
        pb[0, r + 1] = s10
        pb[1, r + 1] = s11
        pb[2, r + 1] = s12
        pb[3, r + 1] = s13


#: Entries of the state of a refinement (:func:`_brent_init`): the bracket (UA, UB) of
#: ln kep, the best point UX and the two next best UW, UV with their costs FX, FW, FV, the
#: last two steps E, STEP, the linear parameters at UX, the rate exp(UX), c.y, and the
#: delay index.
UA, UB, UX, UW, UV, FX, FW, FV, E, STEP, BEST_A, BEST_B, RATE, SCY, DELAY = range(15)


@njit(cache=True)
def _brent_init(code, y, keps, tabs, lo, hi, syy, node, st):
    """State ``st`` of the refinement of ``node`` (:func:`_refined_start`); True if it runs.

    The bracket (ua, ux, ub) of ln kep around the node, with exact costs. Patlak and a
    node without two neighbours on either side are not refined.
    """
    f, c, prod, box = tabs
    nk = keps.shape[0]
    best_j = int(node[3])
    best_d = int(node[4])
    st[FX] = node[0]
    st[BEST_A] = node[1]
    st[BEST_B] = node[2]
    st[RATE] = keps[best_j]
    st[DELAY] = best_d
    if not (code != 2 and 2 <= best_j <= nk - 2):
        return False
    scy = _dot_c(c, best_d, y)
    st[SCY] = scy
    ua = math.log(keps[best_j - 1])
    ub = math.log(keps[best_j + 1])
    ja = best_j - 1
    jb = best_j + 1
    fa = _node(code, keps[ja], prod, best_d, ja, _dot(f, best_d, ja, y), scy, syy, lo, hi,
               np.inf)[2]  # fmt: skip
    fb = _node(code, keps[jb], prod, best_d, jb, _dot(f, best_d, jb, y), scy, syy, lo, hi,
               np.inf)[2]  # fmt: skip
    st[UA] = ua
    st[UB] = ub
    st[UX] = math.log(st[RATE])
    # Brent's minimisation (parabolas through the three best points, golden-section steps
    # when a parabola misbehaves), bracket [ua, ub]
    if fa < fb:
        st[UW], st[FW], st[UV], st[FV] = ua, fa, ub, fb
    else:
        st[UW], st[FW], st[UV], st[FV] = ub, fb, ua, fa
    st[E] = ub - ua
    st[STEP] = 0.0
    return True


@njit(cache=True)
def _brent_propose(st):
    """The next rate (ln kep) of a refinement, and False once its step is below the tolerance."""
    ua, ub, ux, uw, uv = st[UA], st[UB], st[UX], st[UW], st[UV]
    fx, fw, fv = st[FX], st[FW], st[FV]
    e = st[E]
    step = st[STEP]
    um = 0.5 * (ua + ub)
    golden = True
    if abs(e) > REFINE_TOL:
        r = (ux - uw) * (fx - fv)
        q = (ux - uv) * (fx - fw)
        pp = (ux - uv) * q - (ux - uw) * r
        q = 2.0 * (q - r)
        if q > 0.0:
            pp = -pp
        q = abs(q)
        if abs(pp) < abs(0.5 * q * e) and pp > q * (ua - ux) and pp < q * (ub - ux):
            e = step
            step = pp / q
            golden = False
    if golden:
        e = (ua - ux) if ux >= um else (ub - ux)
        step = 0.381966 * e
    st[E] = e
    st[STEP] = step
    return ux + step, abs(step) >= REFINE_TOL


@njit(cache=True)
def _brent_take(st, u, a, b, fu):
    """Take the cost ``fu`` (linear parameters a, b) at ``u`` into a refinement's state."""
    ux = st[UX]
    if fu <= st[FX]:
        if u >= ux:
            st[UA] = ux
        else:
            st[UB] = ux
        st[UV], st[FV], st[UW], st[FW] = st[UW], st[FW], ux, st[FX]
        st[UX] = u
        st[FX] = fu
        st[BEST_A] = a
        st[BEST_B] = b
        st[RATE] = math.exp(u)
    else:
        if u < ux:
            st[UA] = u
        else:
            st[UB] = u
        if fu <= st[FW] or st[UW] == ux:
            st[UV], st[FV], st[UW], st[FW] = st[UW], st[FW], u, fu
        elif fu <= st[FV] or st[UV] == ux or st[UV] == st[UW]:
            st[UV], st[FV] = u, fu


@njit(cache=True)
def _brent_start(code, delays, lo, hi, fit_delay, st, theta):
    """The polish's start from a refinement's state, written into theta; its cost."""
    k = st[RATE]
    theta[0] = st[BEST_A]
    if code == 2:
        theta[1] = st[BEST_B]
    else:
        theta[1] = _clip(st[BEST_A] / k, lo[1], hi[1]) if k > 0.0 else VE_AT_ZERO_RATE
        if code == 1:
            theta[2] = st[BEST_B]
    if fit_delay:
        theta[theta.shape[0] - 1] = delays[int(st[DELAY])]
    return st[FX]


@njit(cache=True)
def _refined_start(code, t, y, keps, delays, tabs, lo, hi, fit_delay, syy, node, fbuf, theta,
                   st):  # fmt: skip
    """Start of the polish from a node, refined in kep, written into theta; its cost.

    ``node`` is (cost, Ktrans, vp, kep index, delay index); theta the full parameter vector;
    ``st`` (15,) scratch.

    The refinement is Brent's minimisation in ``ln kep`` between the node's neighbours
    (:data:`REFINE_ITER` steps at most, :data:`REFINE_ITER_DELAY` with a fitted delay, to
    :data:`REFINE_TOL`), each step one recursion and the 2 x 2 solve; the
    Levenberg-Marquardt polish does the rest.
    """
    f, c, prod, box = tabs
    if _brent_init(code, y, keps, tabs, lo, hi, syy, node, st):
        d = int(st[DELAY])
        for _ in range(REFINE_ITER_DELAY if fit_delay else REFINE_ITER):
            u, go = _brent_propose(st)
            if not go:
                break
            a, b, fu = _reduced(code, t, c[d], y, u, syy, st[SCY], prod[d, 0, 2], lo, hi, fbuf)
            _brent_take(st, u, a, b, fu)
    return _brent_start(code, delays, lo, hi, fit_delay, st, theta)


@njit(cache=True)
def _refined_pair(code, t, y, keps, delays, tabs, lo, hi, syy, nodes, fbuf, gbuf, starts, costs,
                  sts):  # fmt: skip
    """:func:`_refined_start` of two nodes of a delay fit (rows of ``nodes``) side by side.

    Each refinement takes the steps it would take alone, and its result is the same; the
    two recursions of a step run in one loop (each alone waits on its own latency).
    Writes the starts into ``starts[0]``, ``starts[1]`` and their costs into ``costs``;
    ``sts`` (2, 15) is scratch.
    """
    f, c, prod, box = tabs
    s1 = sts[0]
    s2 = sts[1]
    on1 = _brent_init(code, y, keps, tabs, lo, hi, syy, nodes[0], s1)
    on2 = _brent_init(code, y, keps, tabs, lo, hi, syy, nodes[1], s2)
    d1 = int(s1[DELAY])
    d2 = int(s2[DELAY])
    for _ in range(REFINE_ITER_DELAY):
        u1 = 0.0
        u2 = 0.0
        if on1:
            u1, on1 = _brent_propose(s1)
        if on2:
            u2, on2 = _brent_propose(s2)
        if on1 and on2:
            a1, b1, f1, a2, b2, f2 = _reduced_pair(code, t, c[d1], c[d2], y, u1, u2, syy,
                                                   s1[SCY], s2[SCY], prod[d1, 0, 2],
                                                   prod[d2, 0, 2], lo, hi, fbuf,
                                                   gbuf)  # fmt: skip
            _brent_take(s1, u1, a1, b1, f1)
            _brent_take(s2, u2, a2, b2, f2)
        elif on1:
            a1, b1, f1 = _reduced(code, t, c[d1], y, u1, syy, s1[SCY], prod[d1, 0, 2], lo, hi,
                                  fbuf)  # fmt: skip
            _brent_take(s1, u1, a1, b1, f1)
        elif on2:
            a2, b2, f2 = _reduced(code, t, c[d2], y, u2, syy, s2[SCY], prod[d2, 0, 2], lo, hi,
                                  fbuf)  # fmt: skip
            _brent_take(s2, u2, a2, b2, f2)
        else:
            break
    costs[0] = _brent_start(code, delays, lo, hi, True, s1, starts[0])
    costs[1] = _brent_start(code, delays, lo, hi, True, s2, starts[1])


@njit(cache=True)
def _argmin_cost(per_delay):
    """Index of the delay with the lowest cost (0 if none is finite)."""
    best = 0
    for d in range(per_delay.shape[0]):
        if per_delay[d, 0] < per_delay[best, 0]:
            best = d
    return best


@njit(cache=True)
def _argmin_searched(per_delay, w0, w1, w_stride):
    """:func:`_argmin_cost` over the delays a delay search wrote (the others are stale).

    Those are every :data:`DELAY_COARSE`-th delay from ``DELAY_COARSE // 2`` and every
    ``w_stride``-th delay of the window ``w0 <= d < w1``; of equal costs the lowest index
    wins, as in :func:`_argmin_cost`. Returns a written delay (of cost inf if none is
    finite; 0 if none was written).
    """
    best = -1
    b_cost = np.inf
    for d in range(w0, w1, w_stride):
        c = per_delay[d, 0]
        if best < 0 or c < b_cost:
            best = d
            b_cost = c
    for d in range(DELAY_COARSE // 2, per_delay.shape[0], DELAY_COARSE):
        c = per_delay[d, 0]
        if best < 0 or c < b_cost or (c == b_cost and d < best):
            best = d
            b_cost = c
    return max(best, 0)


@njit(cache=True)
def _fit_voxel(code, t, ca, y, keps, delays, kinks, tabs, lo, hi, fit_delay, max_iter, out,
               jtj, ws, per_delay, sfy, fbuf, start, theta, segmented, blo, bhi, seg_ws,
               done_ws, prep, prow, brent):  # fmt: skip
    """Search the nodes and polish the best; ``out``, ``jtj`` as in :func:`fit_serial`.

    ``prep`` is :func:`_prepare`'s. With a delay, the coarse search takes its products from
    ``prow`` (the voxel's row of :func:`_block_products` over :func:`coarse_search_data`).

    With a delay and ``segmented`` (:func:`segmented`), see :func:`_fit_segments`;
    with a delay otherwise, the :data:`DELAY_REFINED` best delays of the fine search are
    refined in kep and the best of them is polished; a result near a kink is polished
    again from the kink's other side (:data:`KINK_NEAR`) and the better result is kept.
    ``blo``, ``bhi``, ``seg_ws``, ``done_ws``, ``brent`` are scratch (:func:`_fit_range`).
    """
    p = lo.shape[0]
    syy = 0.0
    for i in range(y.shape[0]):
        syy += y[i] * y[i]
    nd = delays.shape[0]
    nk = keps.shape[0]
    low = sfy[nk : 2 * nk]  # scratch of the search
    cbuf = sfy[2 * nk :]
    sfy = sfy[:nk]
    w0 = 0
    w1 = nd
    fine = 1
    if fit_delay and nd > 1:
        # the coarse delays, then every delay within one coarse step of the best of them
        # (with segments, every COARSE_KEP_STRIDE-th rate and FINE_STRIDE-th delay); only
        # these delays of per_delay are written, and read (_argmin_searched)
        k_stride = COARSE_KEP_STRIDE if segmented else 1
        fine = FINE_STRIDE if segmented else 1
        _search_coarse(prow, tabs, prep[1], syy, per_delay, k_stride, sfy, low, cbuf)
        d_best = _argmin_searched(per_delay, 0, 0, 1)
        w0 = max(d_best - DELAY_WINDOW, 0)
        w1 = min(d_best + DELAY_WINDOW + 1, nd)
        _search_window(y, tabs, syy, per_delay, d_best, w0, w1, fine, sfy, low, prow, k_stride)
    else:
        _search(y, tabs, syy, per_delay, 0, nd, 1, sfy, 1, low)
    cand = np.empty(p)
    if fit_delay and nd > 1 and segmented:
        _fit_segments(code, t, ca, y, keps, delays, kinks, prep[2], tabs, lo, hi, max_iter, out,
                      jtj, ws, per_delay, w0, w1, fine, fbuf, theta, syy, cand, blo, bhi, seg_ws,
                      done_ws, brent)  # fmt: skip
        return
    node = np.empty(5)
    if fit_delay and nd > 1:
        # the delays ranked by their cost at the refined kep: the grid's kep resolution
        # cannot rank delays whose costs differ by less than its own error
        best = np.inf
        for _ in range(DELAY_REFINED):
            d_best = _argmin_searched(per_delay, w0, w1, fine)
            if per_delay[d_best, 0] == np.inf:
                break
            for q in range(4):
                node[q] = per_delay[d_best, q]
            node[4] = d_best
            per_delay[d_best, 0] = np.inf
            cost = _refined_start(code, t, y, keps, delays, tabs, lo, hi, fit_delay, syy, node,
                                  fbuf, cand, brent[0])  # fmt: skip
            if cost < best:
                best = cost
                for q in range(p):
                    start[q] = cand[q]
    else:
        d_best = _argmin_cost(per_delay)
        for q in range(4):
            node[q] = per_delay[d_best, q]
        node[4] = d_best
        _refined_start(code, t, y, keps, delays, tabs, lo, hi, fit_delay, syy, node, fbuf, start,
                       brent[0])  # fmt: skip
    sse, acc, conv = _lm._fit_one(code, t, ca, y, start, lo, hi, fit_delay, max_iter, theta, ws)
    _keep(out, jtj, theta, p, sse, acc, conv, ws, y)
    if not fit_delay or kinks.shape[0] < 2:
        return
    # near a kink the cost can have a lower minimum on its other side: polish from there too
    dq = p - 1
    m = np.searchsorted(kinks, theta[dq])
    m0 = max(m - 1, 0)
    m1 = min(m, kinks.shape[0] - 1)
    kink = kinks[m0] if abs(kinks[m0] - theta[dq]) <= abs(kinks[m1] - theta[dq]) else kinks[m1]
    mk = m0 if kink == kinks[m0] else m1
    gap = np.inf
    if mk > 0:
        gap = kinks[mk] - kinks[mk - 1]
    if mk < kinks.shape[0] - 1:
        gap = min(gap, kinks[mk + 1] - kinks[mk])
    off = theta[dq] - kink
    if abs(off) >= KINK_NEAR * gap:
        return
    for q in range(p):
        cand[q] = theta[q]
    side = -1.0 if off >= 0.0 else 1.0
    cand[dq] = _clip(kink + side * max(abs(off), KINK_STEP * gap), lo[dq], hi[dq])
    sse, acc, conv = _lm._fit_one(code, t, ca, y, cand, lo, hi, fit_delay, max_iter, theta, ws)
    if sse < out[p]:
        _keep(out, jtj, theta, p, sse, acc, conv, ws, y)


@njit(cache=True)
def segmented(kinks):
    """True if the kinks are at least :data:`SEGMENT_MIN` s apart (evenly spaced frames).

    The delay fit then polishes within one segment between kinks at a time.
    """
    if kinks.shape[0] < 2:
        return False
    for m in range(kinks.shape[0] - 1):
        if kinks[m + 1] - kinks[m] < SEGMENT_MIN:
            return False
    return True


@njit(cache=True, inline="always")
def _segment(kinks, delay, lo, hi):
    """The segment between kinks that holds ``delay``: ``(m, lower, upper)``.

    Segment m spans ``[kinks[m-1], kinks[m]]`` (a bound of the search, ``lo`` or ``hi``,
    beyond the first and last kink); a delay on a kink is in the segment above it.
    """
    m = np.searchsorted(kinks, delay, side="right")
    s_lo = kinks[m - 1] if m > 0 else lo
    s_hi = kinks[m] if m < kinks.shape[0] else hi
    return m, s_lo, s_hi


@njit(cache=True)
def segment_bases(t, ca, kinks, lo, hi):
    """The delayed AIF's basis (:func:`phantomdce.fit._lm.segment_basis`) of every segment.

    Segment m (:func:`_segment`) spans ``[kinks[m-1], kinks[m]]`` (``lo``, ``hi`` beyond the
    first and last kink); returns (n_kinks + 1, 2, n_t): the delayed AIF at its lower end
    and its slope. Computed once a fit, not once a polish.
    """
    nm = kinks.shape[0] + 1
    bases = np.empty((nm, 2, t.shape[0]))
    for m in range(nm):
        s_lo = kinks[m - 1] if m > 0 else lo
        s_hi = kinks[m] if m < kinks.shape[0] else hi
        _lm.segment_basis(t, ca, s_lo, s_hi, bases[m, 0], bases[m, 1])
    return bases


@njit(cache=True)
def _polish_in(code, t, ca, y, cand, lo, hi, kinks, bases, max_iter, out, jtj, ws, theta, blo,
               bhi):  # fmt: skip
    """Polish ``cand`` with the delay bounded to its segment; keep it if better. Returns m.

    ``bases`` are the segments' :func:`segment_bases`.
    """
    p = lo.shape[0]
    dq = p - 1
    m, s_lo, s_hi = _segment(kinks, cand[dq], lo[dq], hi[dq])
    for q in range(p):
        blo[q] = lo[q]
        bhi[q] = hi[q]
    blo[dq] = s_lo
    # at a kink the model's delay derivative is the one of the segment above it: the upper
    # end of a segment is held just below its kink, where the derivative is this segment's
    bhi[dq] = s_hi - KINK_EPS * (s_hi - s_lo) if m < kinks.shape[0] else s_hi
    _lm.use_segment(bases[m, 0], bases[m, 1], s_lo, ws)  # the delayed AIF is linear there
    sse, acc, conv = _lm._fit_one(code, t, ca, y, cand, blo, bhi, True, max_iter, theta, ws)
    _lm.clear_segment(ws)
    if sse < out[p] or out[p] == np.inf:  # the first polish is kept whatever its cost
        _keep(out, jtj, theta, p, sse, acc, conv, ws, y)
    return m


@njit(cache=True)
def _fit_segments(code, t, ca, y, keps, delays, kinks, bases, tabs, lo, hi, max_iter, out, jtj,
                  ws, per_delay, w0, w1, fine, fbuf, theta, syy, cand, blo, bhi, seg_ws, done_ws,
                  brent):  # fmt: skip
    """Delay fit polished within segments between kinks (the cost is smooth within one).

    The :data:`DELAY_REFINED` best nodes of the search are refined in kep
    (:func:`_refined_start`); the best refined start is polished with the delay bounded to
    its segment, the others in other segments too if their refined cost is within
    :data:`SIDE_MARGIN` of the polished one. A result within :data:`KINK_NEAR` of a
    segment's end (a kink) is polished in the segment beyond it as well, from the
    mirrored delay; the best polished result is kept. ``bases`` are the segments'
    :func:`segment_bases`; ``per_delay`` holds the search's delays (:func:`_argmin_searched`
    with the window ``w0``, ``w1``, ``fine``). ``seg_ws`` (DELAY_REFINED + 1,
    max(p, DELAY_REFINED)), ``done_ws`` (DELAY_REFINED + 1, int) and ``brent``
    (:func:`_fit_range`) are scratch.
    """
    p = lo.shape[0]
    dq = p - 1
    out[p] = np.inf
    n_c = 0
    costs = seg_ws[0]
    starts = seg_ws[1:]
    done = done_ws
    nodes = brent[2:, :5]
    for c in range(DELAY_REFINED):
        costs[c] = np.inf
        d_best = _argmin_searched(per_delay, w0, w1, fine)
        if per_delay[d_best, 0] == np.inf:
            break
        for q in range(4):
            nodes[c, q] = per_delay[d_best, q]
        nodes[c, 4] = d_best
        per_delay[d_best, 0] = np.inf
        n_c += 1
    if n_c == 0:
        return  # no feasible node: not fitted (cost inf)
    if n_c == 2:
        _refined_pair(code, t, y, keps, delays, tabs, lo, hi, syy, nodes, fbuf,
                      brent[4, : t.shape[0]], starts[:, :p], costs, brent[:2])  # fmt: skip
    else:
        for c in range(n_c):
            costs[c] = _refined_start(code, t, y, keps, delays, tabs, lo, hi, True, syy, nodes[c],
                                      fbuf, starts[c, :p], brent[0])  # fmt: skip
    done[:] = -1
    c1 = np.argmin(costs[:n_c])
    done[0] = _polish_in(code, t, ca, y, starts[c1, :p], lo, hi, kinks, bases, max_iter, out, jtj,
                         ws, theta, blo, bhi)  # fmt: skip
    for c in range(n_c):
        m = _segment(kinks, starts[c, dq], lo[dq], hi[dq])[0]
        seen = False
        for k in range(DELAY_REFINED + 1):
            seen = seen or done[k] == m
        if not seen and costs[c] < out[p] * (1.0 + SIDE_MARGIN):
            done[c + 1] = _polish_in(code, t, ca, y, starts[c, :p], lo, hi, kinks, bases, max_iter,
                                     out, jtj, ws, theta, blo, bhi)  # fmt: skip
    # near a kink the cost can have a lower minimum on its other side: polish there too
    delay = out[dq]
    k = np.searchsorted(kinks, delay)
    if k == kinks.shape[0] or (k > 0 and delay - kinks[k - 1] < kinks[k] - delay):
        k -= 1
    kink = kinks[k]  # the nearest kink; segment k is below it, k + 1 above
    if not (lo[dq] < kink < hi[dq]):
        return
    below = kink - (kinks[k - 1] if k > 0 else lo[dq])
    above = (kinks[k + 1] if k + 1 < kinks.shape[0] else hi[dq]) - kink
    if delay < kink:  # polished below the kink (ends at KINK_EPS below it)
        m_next = k + 1
        gap = above
        side = 1.0
        if kink - delay >= KINK_NEAR * below:
            return
    else:
        m_next = k
        gap = below
        side = -1.0
        if delay - kink >= KINK_NEAR * above:
            return
    for c in range(DELAY_REFINED + 1):
        if done[c] == m_next:
            return
    for q in range(p):
        cand[q] = out[q]
    if abs(delay - kink) <= 2.0 * KINK_EPS * max(below, above):
        # on the kink: a minimum of the other segment too unless the cost decreases into it
        cand[dq] = kink + side * KINK_EPS * gap
        if side * _delay_gradient(code, t, ca, y, cand, ws) <= 0.0:
            return
    cand[dq] = kink + side * min(max(abs(delay - kink), KINK_STEP * gap), 0.5 * gap)
    _polish_in(code, t, ca, y, cand, lo, hi, kinks, bases, max_iter, out, jtj, ws, theta, blo,
               bhi)  # fmt: skip


@njit(cache=True)
def _delay_gradient(code, t, ca, y, theta, ws):
    """``J_delay . r`` at theta: positive where the cost decreases as the delay grows."""
    vec, jacs, _, _, _, _, _ = ws
    model = vec[10]
    jac = jacs[1]
    _lm._model_jac(code, theta, t, ca, True, vec[:9], model, jac)
    dq = theta.shape[0] - 1
    s = 0.0
    for i in range(y.shape[0]):
        s += jac[dq, i] * (y[i] - model[i])
    return s


@njit(cache=True, inline="always")
def _keep(out, jtj, theta, p, sse, acc, conv, ws, y):
    """Store a polished fit: parameters, cost, accepted steps, convergence and J^T J."""
    for q in range(p):
        out[q] = theta[q]
    out[p] = sse
    out[p + 1] = acc
    out[p + 2] = 1.0 if conv else 0.0
    _lm.final_normal(ws, y, jtj)


@njit(cache=True)
def _fit_range(code, t, ca, ys, keps, delays, kinks, tabs, prep, lo, hi, fit_delay, max_iter,
               out, jtj, v0, v1):  # fmt: skip
    """Fit voxels ``v0`` to ``v1``, :data:`BLOCK` at a time (``prep``: :func:`_prepare`)."""
    p = lo.shape[0]
    n = t.shape[0]
    ws = _lm.workspace(n, p)
    per_delay = np.empty((delays.shape[0], 4))
    sfy = np.empty(3 * keps.shape[0])  # the products f.y and the search's scratch
    fbuf = np.empty(n)
    start = np.empty(p)
    theta = np.empty(p)
    blo = np.empty(p)
    bhi = np.empty(p)
    seg = fit_delay and segmented(kinks)
    seg_ws = np.empty((DELAY_REFINED + 1, max(p, DELAY_REFINED)))
    done_ws = np.empty(DELAY_REFINED + 1, dtype=np.int64)
    rows = prep[0]
    blocked = fit_delay and delays.shape[0] > 1
    yb = np.zeros((BLOCK, n))
    pb = np.empty((BLOCK, rows.shape[0]))
    # the refinements' states (rows 0-1), nodes (2-3) and second recursion's curve (4)
    brent = np.empty((5, max(15, n)))
    for b0 in range(v0, v1, BLOCK):
        b1 = min(b0 + BLOCK, v1)
        if blocked:
            for k in range(BLOCK):
                for i in range(n):
                    yb[k, i] = ys[b0 + k, i] if b0 + k < b1 else 0.0
            _block_products(rows, yb, pb)
        for v in range(b0, b1):
            if out[v, 0] == out[v, 0]:  # NaN marks a voxel screened out as unfittable
                _fit_voxel(
                    code, t, ca, ys[v], keps, delays, kinks, tabs, lo, hi, fit_delay, max_iter,
                    out[v], jtj[v], ws, per_delay, sfy, fbuf, start, theta, seg, blo, bhi,
                    seg_ws, done_ws, prep, pb[v - b0], brent,
                )  # fmt: skip


@njit(cache=True)
def _prepare(t, ca, tabs, kinks, lo, hi, fit_delay):
    """What every voxel of a delay fit shares beside the tables (empty arrays without one).

    :func:`coarse_search_data` (at the rate stride :func:`_fit_voxel` takes) and, with
    segments (:func:`segmented`), :func:`segment_bases`.
    """
    n = t.shape[0]
    if not fit_delay or tabs[0].shape[0] < 2:
        return np.zeros((0, n)), np.zeros((7, 0)), np.zeros((0, 2, n))
    seg = segmented(kinks)
    k_stride = COARSE_KEP_STRIDE if seg else 1
    dq = lo.shape[0] - 1
    bases = segment_bases(t, ca, kinks, lo[dq], hi[dq]) if seg else np.zeros((0, 2, n))
    rows, nodes = coarse_search_data(tabs, k_stride)
    return rows, nodes, bases


@njit(cache=True, nogil=True)
def fit_serial(code, t, ca, ys, keps, delays, kinks, lo, hi, fit_delay, max_iter, out, jtj):
    """Fit every voxel (rows of ys): grid of (delay, kep) nodes, then the LM polish.

    ``keps`` (/s) and ``delays`` (s; ignored unless ``fit_delay``) are the nodes, ``kinks``
    the delays (s) at which a delayed frame meets an AIF sample (:func:`kinks`); ``lo``,
    ``hi`` the bounds of the parameter vector (:mod:`phantomdce.fit._lm` order and units).
    ``out`` (n_vox, p + 3) receives the parameters, the residual sum of squares, the
    number of accepted polish steps and the converged flag; ``jtj`` (n_vox, p, p) the
    normal matrix at the solution. A row of ``out`` whose first value is NaN is skipped.
    """
    tabs = tables(code, t, ca, keps, delays, lo, hi, fit_delay)
    prep = _prepare(t, ca, tabs, kinks, lo, hi, fit_delay)
    _fit_range(code, t, ca, ys, keps, delays, kinks, tabs, prep, lo, hi, fit_delay, max_iter, out,
               jtj, 0, ys.shape[0])  # fmt: skip


@njit(cache=True, parallel=True)
def fit_parallel(code, t, ca, ys, keps, delays, kinks, lo, hi, fit_delay, max_iter, out, jtj,
                 n_chunks):
    """As :func:`fit_serial`, voxels shared across numba's threads in ``n_chunks`` chunks."""
    tabs = tables(code, t, ca, keps, delays, lo, hi, fit_delay)
    prep = _prepare(t, ca, tabs, kinks, lo, hi, fit_delay)
    n_vox = ys.shape[0]
    n_chunks = max(min(n_chunks, n_vox), 1)
    for ch in prange(n_chunks):
        _fit_range(code, t, ca, ys, keps, delays, kinks, tabs, prep, lo, hi, fit_delay, max_iter,
                   out, jtj, ch * n_vox // n_chunks, (ch + 1) * n_vox // n_chunks)  # fmt: skip
