"""Ground truth: tissue curves in continuous time, sampled only at the end.

The kinetic models are evaluated on an internal grid whose spacing
(:data:`TRUTH_STEP_S`) does not depend on the protocol's frame interval, with the frame
times (and acquisition-window edges) inserted as extra nodes and the bolus arrival
inserted twice so that an AIF that jumps at arrival is represented exactly. On that grid
the convolution is exact for the piecewise-linear interpolant of the continuous AIF, so
the only error is the interpolation error of the AIF between nodes 0.01 s apart, which
the test suite bounds against adaptive quadrature of the continuous model (< 1e-6 mM).

Frame ``k`` is acquired at ``t_k = k * dt`` (s). In ``"instant"`` sampling the frame
value is the value at ``t_k``; in ``"average"`` sampling it is the mean over the window
``[t_k - dt/2, t_k + dt/2]`` (for the signal, the mean of the signal, since the scanner
averages signal, not concentration).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from phantomdce.kinetics import convolve_irf, irf_terms

__all__ = ["TRUTH_STEP_S", "TruthGrid", "truth_grid", "tissue_truth", "window_mean"]

#: Spacing of the internal ground-truth grid, s. Independent of the protocol.
TRUTH_STEP_S = 0.01

SAMPLING_MODES = ("instant", "average")


@dataclass(frozen=True)
class TruthGrid:
    """The internal time grid and where the frames sit on it.

    Attributes
    ----------
    t : ndarray (n_grid,)
        Node times in s, non-decreasing; ``bat`` appears twice (left and right limits).
    jump : int
        Index of the left-limit node at the bolus arrival (value forced to 0), or -1.
    frame_idx : ndarray (n_frames,)
        Node index of each frame time (instant sampling).
    lo_idx, hi_idx : ndarray (n_frames,)
        Node indices of each frame's window edges (average sampling).

    """

    t: NDArray[np.float64]
    jump: int
    frame_idx: NDArray[np.int64]
    lo_idx: NDArray[np.int64]
    hi_idx: NDArray[np.int64]


def truth_grid(
    frame_times: NDArray[np.float64],
    *,
    bat: float,
    window: float = 0.0,
    step: float = TRUTH_STEP_S,
) -> TruthGrid:
    """Build the internal grid for a set of frame times.

    Parameters
    ----------
    frame_times : ndarray (n_frames,)
        Frame times in s, strictly increasing.
    bat : float
        Bolus arrival time in s; the AIF is zero before it.
    window : float, optional
        Width of each frame's acquisition window in s (0 for instant sampling).
    step : float, optional
        Grid spacing in s.

    Returns
    -------
    TruthGrid

    """
    frame_times = np.asarray(frame_times, dtype=np.float64)
    half = 0.5 * window
    start = min(0.0, float(frame_times[0]) - half)
    stop = float(frame_times[-1]) + half
    n = int(np.ceil((stop - start) / step)) + 1
    base = start + step * np.arange(n)
    extra = np.concatenate([frame_times, frame_times - half, frame_times + half, [bat]])
    nodes = np.unique(np.concatenate([base, extra]))
    # drop base nodes closer than 1e-9 s to an inserted node (avoid near-zero segments)
    keep = np.ones(nodes.size, dtype=bool)
    keep[1:] = np.diff(nodes) > 1e-9
    nodes = nodes[keep]
    snap = lambda x: np.searchsorted(nodes, x - 5e-10)  # noqa: E731
    jump = -1
    if nodes[0] < bat <= nodes[-1]:
        j = int(snap(bat))
        nodes = np.insert(nodes, j, nodes[j])
        jump = j
    return TruthGrid(
        t=nodes,
        jump=jump,
        frame_idx=_index(nodes, frame_times, jump),
        lo_idx=_index(nodes, frame_times - half, jump),
        hi_idx=_index(nodes, frame_times + half, jump),
    )


def _index(nodes: NDArray, x: NDArray, jump: int) -> NDArray[np.int64]:
    idx = np.searchsorted(nodes, x - 5e-10).astype(np.int64)
    # a frame exactly at the bolus arrival sees the right-hand limit
    if jump >= 0:
        idx[idx == jump] = jump + 1
    return idx


def aif_on_grid(
    grid: TruthGrid, aif: Callable[[NDArray[np.float64]], NDArray[np.float64]]
) -> NDArray[np.float64]:
    """Evaluate a continuous AIF (zero before arrival) on the grid, honouring the jump."""
    ca = np.asarray(aif(grid.t), dtype=np.float64)
    if grid.jump >= 0:
        ca = ca.copy()
        ca[grid.jump] = 0.0
    return ca


def window_mean(grid: TruthGrid, values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean of ``values`` (..., n_grid) over each frame window (trapezoid on the grid)."""
    t = grid.t
    seg = 0.5 * (values[..., 1:] + values[..., :-1]) * np.diff(t)
    cum = np.concatenate([np.zeros(values.shape[:-1] + (1,)), np.cumsum(seg, axis=-1)], axis=-1)
    width = t[grid.hi_idx] - t[grid.lo_idx]
    return (cum[..., grid.hi_idx] - cum[..., grid.lo_idx]) / width


def tissue_truth(
    model: str,
    params: Mapping[str, NDArray[np.float64]],
    *,
    grid: TruthGrid,
    ca_grid: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Noise-free tissue concentration on the whole truth grid.

    Parameters
    ----------
    model : str
        Kinetic model name (see :data:`phantomdce.params.MODELS`).
    params : mapping of str to ndarray (n,)
        Model parameters in package units (``Ktrans``/``ps`` in /min, ``fp`` in
        mL/100mL/min, ``ve``/``vp`` 0-1).
    grid : TruthGrid
        Internal grid.
    ca_grid : ndarray (n_grid,)
        Plasma AIF on the grid, mM (from :func:`aif_on_grid`).

    Returns
    -------
    ndarray (n, n_grid)
        Tissue concentration in mM at every grid node.

    """
    vp_term, amps, rates = irf_terms(model, **params)
    return convolve_irf(grid.t, ca_grid, vp_term, amps, rates, allow_jumps=True)
