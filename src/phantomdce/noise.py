"""Rician magnitude noise and reproducible random streams.

SNR definition used throughout phantomdce
-----------------------------------------
``SNR = mean(noise-free pre-contrast signal of the voxel) / sigma``, where ``sigma`` is the
standard deviation of EACH of the two (real and imaginary) Gaussian noise channels. The
stored magnitude signal is Rician::

    S_noisy = |S + n_re + i n_im|,   n_re, n_im ~ N(0, sigma^2) independent.

At high SNR the standard deviation of ``S_noisy`` tends to ``sigma``; at zero signal
``S_noisy`` is Rayleigh distributed with mean ``sigma sqrt(pi/2)``.

Reproducibility
---------------
Randomness only ever comes from an explicit :class:`numpy.random.Generator`; nothing here
touches numpy's global random state. :func:`rng_for` derives an independent stream from a
root seed and a key such as ``(case index, stream id, block index)``. When a simulation is
split into fixed logical blocks, each with its own key, the noise of every block depends only
on ``(seed, *key)`` and on the block's data, never on how blocks are scheduled across
processes, threads or chunks of work.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["add_rician_noise", "noise_sigma", "rng_for"]

#: Elements of imaginary-channel noise drawn per block (fits in L2 cache; no effect on values).
_BLOCK_ELEMENTS = 1 << 15


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """Return an independent random generator for ``(seed, *key)``.

    Parameters
    ----------
    seed : int
        Root seed of the study (non-negative integer).
    *key : int
        Non-negative integers naming the stream, e.g. ``case_index, stream_id, block_index``.

    Returns
    -------
    numpy.random.Generator
        ``Generator(PCG64(SeedSequence(seed, spawn_key=key)))``. Its draws depend only on
        ``seed`` and ``key``: the same keys always reproduce the same numbers, regardless of
        how the rest of the work is chunked or ordered; different keys give statistically
        independent streams.

    Raises
    ------
    ValueError
        If ``seed`` or a key element is not a non-negative integer.

    Examples
    --------
    >>> a = rng_for(42, 0, 1, 7).standard_normal(3)
    >>> b = rng_for(42, 0, 1, 7).standard_normal(3)
    >>> bool(np.array_equal(a, b))
    True
    >>> bool(np.array_equal(a, rng_for(42, 0, 1, 8).standard_normal(3)))
    False

    """
    for name, value in [("seed", seed)] + [(f"key[{i}]", k) for i, k in enumerate(key)]:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name}={value!r}: expected a non-negative integer")
    ss = np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key))
    return np.random.Generator(np.random.PCG64(ss))


def noise_sigma(baseline_signal: ArrayLike, snr: ArrayLike) -> NDArray[np.float64]:
    """Per-channel noise standard deviation for a target SNR.

    Parameters
    ----------
    baseline_signal : array_like
        Mean noise-free pre-contrast signal of each voxel (signal units), >= 0.
    snr : array_like
        Target SNR (dimensionless, > 0), broadcast against ``baseline_signal``;
        ``np.inf`` gives ``sigma = 0`` (no noise).

    Returns
    -------
    ndarray of float64
        ``sigma = baseline_signal / snr`` in signal units: the standard deviation of each of
        the real and imaginary Gaussian channels.

    Raises
    ------
    ValueError
        If ``snr`` is not positive or ``baseline_signal`` is negative or not finite.

    Examples
    --------
    >>> noise_sigma([100.0, 50.0], 20.0)
    array([5. , 2.5])

    """
    base = np.asarray(baseline_signal, dtype=np.float64)
    snr_ = np.asarray(snr, dtype=np.float64)
    bad = ~(snr_ > 0.0)
    if np.any(bad):
        raise ValueError(f"snr={float(snr_[bad].flat[0])!r}: expected an SNR > 0 (or inf)")
    bad = ~(np.isfinite(base) & (base >= 0.0))
    if np.any(bad):
        raise ValueError(
            f"baseline_signal={float(base[bad].flat[0])!r}: expected a finite signal >= 0"
        )
    return base / snr_


@numba.njit(cache=True, nogil=True, fastmath=False)
def _rician_rows(signal, sigma_row, out, n2):  # pragma: no cover - compiled
    """out[i, j] = |signal + sigma_row[i] * (out[i, j] + 1j * n2[i, j])|, in place on out."""
    n_rows, n_cols = signal.shape
    for i in range(n_rows):
        sg = sigma_row[i]
        for j in range(n_cols):
            re = signal[i, j] + sg * out[i, j]
            im = sg * n2[i, j]
            out[i, j] = np.sqrt(re * re + im * im)


@numba.njit(cache=True, nogil=True, fastmath=False)
def _rician_full(signal, sigma, out, n2):  # pragma: no cover - compiled
    """Compute the same as :func:`_rician_rows` with one sigma per element."""
    n_rows, n_cols = signal.shape
    for i in range(n_rows):
        for j in range(n_cols):
            sg = sigma[i, j]
            re = signal[i, j] + sg * out[i, j]
            im = sg * n2[i, j]
            out[i, j] = np.sqrt(re * re + im * im)


def add_rician_noise(
    signal: ArrayLike,
    sigma: ArrayLike,
    *,
    rng: np.random.Generator,
    out: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Add complex Gaussian noise to a noise-free magnitude signal and take the magnitude.

    ``out = |signal + sigma * n_re + 1j * sigma * n_im|`` with ``n_re`` and ``n_im``
    standard normal. The draw order is fixed: all of ``n_re`` (C order over ``signal``),
    then all of ``n_im``, both with ``rng.standard_normal``; so the result depends only on
    the generator state, the shape and the data.

    Parameters
    ----------
    signal : array_like, shape (n_voxels, n_time) (any shape is accepted)
        Noise-free magnitude signal (signal units). Converted to C-contiguous float64 if it
        is not already.
    sigma : array_like, broadcastable to ``signal`` (e.g. shape (n_voxels, 1) or scalar)
        Standard deviation of each Gaussian channel in signal units, >= 0 (see
        :func:`noise_sigma` and the module docstring for the SNR definition).
    rng : numpy.random.Generator
        Source of randomness (required; see :func:`rng_for`).
    out : ndarray of float64, optional
        C-contiguous float64 array with the shape of ``signal`` to write into. It may be
        ``signal`` itself (in-place).

    Returns
    -------
    ndarray of float64
        Rician magnitude signal with the shape of ``signal`` (``out`` if given).

    Raises
    ------
    ValueError
        If ``rng`` is not a Generator, ``sigma`` is negative or not finite or does not
        broadcast, or ``out`` has the wrong shape, dtype or layout.

    Examples
    --------
    >>> s = np.full((2, 4), 100.0)
    >>> noisy = add_rician_noise(s, np.array([[1.0], [2.0]]), rng=rng_for(0, 0))
    >>> noisy.shape, bool(np.all(np.abs(noisy - 100.0) < 10.0))
    ((2, 4), True)

    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng={rng!r}: expected a numpy.random.Generator (see rng_for)")
    sig = np.ascontiguousarray(signal, dtype=np.float64)
    sd = np.asarray(sigma, dtype=np.float64)
    bad = ~(np.isfinite(sd) & (sd >= 0.0))
    if np.any(bad):
        raise ValueError(
            f"sigma={float(sd[bad].flat[0])!r}: expected a finite noise SD >= 0 (signal units)"
        )
    try:
        np.broadcast_shapes(sd.shape, sig.shape)
    except ValueError:
        raise ValueError(
            f"sigma with shape {sd.shape}: expected a shape broadcastable to signal {sig.shape}"
        ) from None
    if np.broadcast_shapes(sd.shape, sig.shape) != sig.shape:
        raise ValueError(
            f"sigma with shape {sd.shape}: broadcasting would enlarge signal {sig.shape}"
        )
    if out is None:
        out = np.empty_like(sig)
    elif not (
        isinstance(out, np.ndarray)
        and out.shape == sig.shape
        and out.dtype == np.float64
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise ValueError(
            f"out={type(out).__name__} {getattr(out, 'shape', '')}: expected a writeable "
            f"C-contiguous float64 array of shape {sig.shape}"
        )
    if sig.size == 0:
        return out

    if np.shares_memory(out, sig):
        # In-place request: draw into a scratch buffer so the signal survives until used.
        target = out
        out = np.empty_like(sig)
    else:
        target = None

    rng.standard_normal(out.shape, dtype=np.float64, out=out)  # real channel, held in out

    # Imaginary channel: drawn block by block into a small reusable buffer. Consecutive
    # standard_normal calls continue the same stream, so the numbers are identical to one
    # full-size draw (the result does not depend on the block size), with less memory.
    n_cols = sig.shape[-1] if sig.ndim else 1
    sig2 = sig.reshape(-1, n_cols)
    out2 = out.reshape(-1, n_cols)
    n_rows = sig2.shape[0]
    rows_per_block = max(1, _BLOCK_ELEMENTS // n_cols)
    buf = np.empty((min(rows_per_block, n_rows), n_cols), dtype=np.float64)
    sd_nd = sd.reshape((1,) * (sig.ndim - sd.ndim) + sd.shape)
    if sig.ndim >= 1 and sd_nd.shape[-1] == 1:
        # One sigma per row (voxel): the common (n_voxels, 1) case.
        sd2 = np.ascontiguousarray(np.broadcast_to(sd_nd[..., 0], sig.shape[:-1])).reshape(-1)
        per_row = True
    else:
        sd2 = np.ascontiguousarray(np.broadcast_to(sd_nd, sig.shape)).reshape(-1, n_cols)
        per_row = False
    for r0 in range(0, n_rows, rows_per_block):
        r1 = min(r0 + rows_per_block, n_rows)
        n2 = buf[: r1 - r0]
        rng.standard_normal(n2.shape, dtype=np.float64, out=n2)
        if per_row:
            _rician_rows(sig2[r0:r1], sd2[r0:r1], out2[r0:r1], n2)
        else:
            _rician_full(sig2[r0:r1], sd2[r0:r1], out2[r0:r1], n2)
    if target is not None:
        target[...] = out
        return target
    return out
