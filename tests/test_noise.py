"""Tests for phantomdce.noise: SNR definition, Rician statistics, reproducible streams."""

import inspect

import numpy as np
import pytest
from scipy import stats

import phantomdce.noise as noise_mod
from phantomdce.noise import add_rician_noise, noise_sigma, rng_for

N = 100_000


def _reference(signal, sigma, rng):
    """Plain-numpy statement of the documented draw order: all n_re, then all n_im."""
    n_re = rng.standard_normal(signal.shape)
    n_im = rng.standard_normal(signal.shape)
    return np.hypot(signal + sigma * n_re, sigma * n_im)


def test_noise_sigma_follows_snr_definition():
    np.testing.assert_allclose(noise_sigma([100.0, 40.0], 20.0), [5.0, 2.0])
    np.testing.assert_allclose(noise_sigma(100.0, [10.0, 50.0]), [10.0, 2.0])
    assert noise_sigma(100.0, np.inf) == 0.0
    with pytest.raises(ValueError, match=r"snr=0\.0: expected an SNR > 0"):
        noise_sigma(100.0, 0.0)
    with pytest.raises(ValueError, match=r"baseline_signal=-1\.0"):
        noise_sigma(-1.0, 10.0)


def test_high_snr_sd_equals_sigma():
    # SNR 100: magnitude SD is sigma to O(1/SNR^2); sample SD within 5% over 1e5 samples
    s0, snr = 200.0, 100.0
    sigma = noise_sigma(s0, snr)
    s = np.full((N // 100, 100), s0)
    noisy = add_rician_noise(s, sigma, rng=rng_for(1, 0))
    assert np.std(noisy) == pytest.approx(sigma, rel=0.05)
    assert np.mean(noisy) == pytest.approx(s0, abs=5 * sigma / np.sqrt(N))


def test_zero_signal_is_rayleigh():
    sigma = 3.0
    noisy = add_rician_noise(np.zeros((1000, 100)), sigma, rng=rng_for(2, 0))
    assert noisy.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.05)
    assert np.mean(noisy**2) == pytest.approx(2 * sigma**2, rel=0.05)  # E|n|^2 = 2 sigma^2


@pytest.mark.parametrize("snr", [0.5, 1.0, 2.0, 3.0])
def test_low_snr_rician_bias(snr):
    s0 = 10.0
    sigma = s0 / snr
    noisy = add_rician_noise(np.full((N // 50, 50), s0), sigma, rng=rng_for(3, int(snr * 10)))
    expected_mean = stats.rice.mean(s0 / sigma, scale=sigma)
    expected_sd = stats.rice.std(s0 / sigma, scale=sigma)
    # standard error of the mean is about sigma / sqrt(N); allow 5 SE
    assert noisy.mean() == pytest.approx(expected_mean, abs=5 * expected_sd / np.sqrt(N))
    assert noisy.mean() > s0  # the Rician bias is upward
    assert noisy.std() == pytest.approx(expected_sd, rel=0.05)
    # distribution test against scipy's Rice
    ks = stats.kstest(noisy.ravel()[:20000], stats.rice(s0 / sigma, scale=sigma).cdf)
    assert ks.pvalue > 1e-4


def test_per_voxel_sigma_and_reference_draw_order():
    rng_sig = np.random.default_rng(0)
    signal = rng_sig.uniform(0, 100, (300, 37))
    sigma = rng_sig.uniform(0.5, 5, (300, 1))
    got = add_rician_noise(signal, sigma, rng=rng_for(9, 1, 2))
    np.testing.assert_allclose(got, _reference(signal, sigma, rng_for(9, 1, 2)), rtol=1e-13)
    # full-shape sigma and scalar sigma take other code paths; same draws
    sig_full = np.broadcast_to(sigma, signal.shape).copy()
    got_full = add_rician_noise(signal, sig_full, rng=rng_for(9, 1, 2))
    np.testing.assert_allclose(got_full, got, rtol=1e-13)
    got_scalar = add_rician_noise(signal, 2.0, rng=rng_for(9, 1, 2))
    np.testing.assert_allclose(got_scalar, _reference(signal, 2.0, rng_for(9, 1, 2)), rtol=1e-13)
    # per-voxel SD matches each sigma (relative error averaged over voxels)
    big = add_rician_noise(
        np.full((4, 20000), 500.0), np.array([[1.0], [2.0], [4.0], [8.0]]), rng=rng_for(9, 3)
    )
    np.testing.assert_allclose(big.std(axis=1), [1.0, 2.0, 4.0, 8.0], rtol=0.05)


def test_out_buffer_and_in_place():
    signal = np.random.default_rng(4).uniform(10, 50, (50, 2000))  # several internal blocks
    expected = _reference(signal, 1.5, rng_for(5, 0))
    out = np.empty_like(signal)
    res = add_rician_noise(signal, 1.5, rng=rng_for(5, 0), out=out)
    assert res is out
    np.testing.assert_allclose(out, expected, rtol=1e-13)
    inplace = signal.copy()
    res2 = add_rician_noise(inplace, 1.5, rng=rng_for(5, 0), out=inplace)
    assert res2 is inplace
    np.testing.assert_allclose(inplace, expected, rtol=1e-13)


def test_same_keys_reproduce_different_keys_differ():
    s = np.full((100, 50), 20.0)
    a = add_rician_noise(s, 2.0, rng=rng_for(123, 0, 1, 0))
    b = add_rician_noise(s, 2.0, rng=rng_for(123, 0, 1, 0))
    np.testing.assert_array_equal(a, b)
    for key in [(123, 0, 1, 1), (123, 1, 1, 0), (123, 0, 2, 0), (124, 0, 1, 0), (123, 0, 1)]:
        c = add_rician_noise(s, 2.0, rng=rng_for(*key))
        assert not np.array_equal(a, c), key
    # the stream for a block depends only on its key, not on what was drawn before
    _ = rng_for(123, 0, 1, 5).standard_normal(1000)
    np.testing.assert_array_equal(add_rician_noise(s, 2.0, rng=rng_for(123, 0, 1, 0)), a)


def test_rng_for_is_seedsequence_spawn_key():
    g = rng_for(7, 3, 1, 4)
    ref = np.random.Generator(np.random.PCG64(np.random.SeedSequence(7, spawn_key=(3, 1, 4))))
    np.testing.assert_array_equal(g.random(5), ref.random(5))
    with pytest.raises(ValueError, match=r"key\[1\]=-1: expected a non-negative integer"):
        rng_for(7, 0, -1)
    with pytest.raises(ValueError, match=r"seed=1\.5"):
        rng_for(1.5)


def test_argument_errors():
    s = np.ones((3, 4))
    with pytest.raises(ValueError, match="rng=.*expected a numpy.random.Generator"):
        add_rician_noise(s, 1.0, rng=np.random.RandomState(0))
    with pytest.raises(ValueError, match=r"sigma=-1\.0"):
        add_rician_noise(s, -1.0, rng=rng_for(0))
    with pytest.raises(ValueError, match=r"sigma with shape \(4, 1\)"):
        add_rician_noise(s, np.ones((4, 1)), rng=rng_for(0))
    with pytest.raises(ValueError, match="out="):
        add_rician_noise(s, 1.0, rng=rng_for(0), out=np.empty((3, 4), dtype=np.float32))


def test_no_global_random_state():
    src = inspect.getsource(noise_mod)
    for bad in ("np.random.seed", "np.random.normal", "np.random.rand", "np.random.standard"):
        assert bad not in src
    state = np.random.get_state()[1].copy()  # noqa: NPY002 - checking it is untouched
    add_rician_noise(np.ones((10, 10)), 1.0, rng=rng_for(0))
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002
