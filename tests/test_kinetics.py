"""Sampled-AIF kinetic models: exact identities, analytic solutions, properties, errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

from phantomdce import kinetics as K

# Weinmann / Tofts-Kermode bi-exponential plasma AIF (LITERATURE.md): D 0.1 mmol/kg,
# a 3.99, 4.78 kg/L, m 0.144, 0.0111 /min.
D, A, M = 0.1, (3.99, 4.78), (0.144 / 60, 0.0111 / 60)


def weinmann(t):
    return D * sum(a * np.exp(-m * t) for a, m in zip(A, M, strict=True))


def tofts_weinmann_closed_form(t, ktrans, ve):
    """Tofts with the Weinmann AIF: Ct = D Ktrans sum a_i (e^-m_i t - e^-kep t)/(kep - m_i)."""
    k = ktrans / 60
    kep = k / ve
    return (
        D
        * k
        * sum(
            a * (np.exp(-m * t) - np.exp(-kep * t)) / (kep - m) for a, m in zip(A, M, strict=True)
        )
    )


def test_tofts_weinmann_closed_form_piecewise_linear_error_is_second_order():
    errs = []
    for dt in (2.0, 1.0, 0.5):
        t = np.arange(0.0, 600.0 + dt, dt)
        ct = K.tofts(t, weinmann(t), ktrans=0.25, ve=0.3)
        errs.append(np.abs(ct - tofts_weinmann_closed_form(t, 0.25, 0.3)).max())
    # exact for the piecewise-linear AIF: the only error is the AIF's interpolation error
    assert errs[-1] < 1e-6
    assert errs[0] / errs[1] == pytest.approx(4.0, rel=0.05)
    assert errs[1] / errs[2] == pytest.approx(4.0, rel=0.05)


def test_exact_for_a_piecewise_linear_input():
    # a ramp input: Tofts solution known in closed form, Ct = Ktrans*(t/k - (1-e^-kt)/k^2)
    t = np.array([0.0, 7.0, 13.0, 60.0, 200.0])  # irregular sampling
    k, ktrans, ve = 0.5 / 60, 0.1, 0.2
    ct = K.tofts(t, t.copy(), ktrans=ktrans, ve=ve)
    kep = ktrans / ve / 60
    exact = ktrans / 60 * (t / kep - (1 - np.exp(-kep * t)) / kep**2)
    np.testing.assert_allclose(ct, exact, rtol=1e-12, atol=1e-14)
    assert k > 0


def test_patlak_is_exact_trapezoid_integral():
    t = np.array([0.0, 10.0, 25.0, 60.0])
    ca = np.array([0.0, 3.0, 1.0, 2.0])
    ct = K.patlak(t, ca, ktrans=0.6, vp=0.1)
    integral = np.concatenate([[0.0], np.cumsum(0.5 * (ca[1:] + ca[:-1]) * np.diff(t))])
    np.testing.assert_allclose(ct, 0.1 * ca + 0.6 / 60 * integral, rtol=1e-13)


def _two_compartment_ode(t_eval, aif, fp, ps, ve, vp, uptake=False):
    fp_s, ps_s = fp / 6000, ps / 60

    def rhs(t, y):
        cp, ce = y
        dcp = (fp_s * (aif(t) - cp) + ps_s * ((0.0 if uptake else ce) - cp)) / vp
        dce = ps_s * (cp - (0.0 if uptake else ce)) / ve
        return [dcp, dce]

    sol = solve_ivp(
        rhs,
        (t_eval[0], t_eval[-1]),
        [0.0, 0.0],
        t_eval=t_eval,
        method="Radau",
        rtol=1e-11,
        atol=1e-13,
        max_step=0.5,
    )
    return vp * sol.y[0] + ve * sol.y[1]


@pytest.mark.parametrize(
    ("fp", "ps", "ve", "vp"),
    [(50.0, 0.1, 0.2, 0.05), (10.0, 0.6, 0.4, 0.02), (120.0, 0.02, 0.1, 0.1)],
)
def test_2cxm_matches_the_compartment_odes(fp, ps, ve, vp):
    t = np.linspace(0, 300, 301)
    ct = K.two_cxm(t, weinmann(t), fp=fp, ps=ps, ve=ve, vp=vp)
    ode = _two_compartment_ode(t, weinmann, fp, ps, ve, vp)
    # sampled model: only the AIF's 1 s interpolation error remains
    np.testing.assert_allclose(ct, ode, atol=2e-6)


@pytest.mark.parametrize(("fp", "ps", "vp"), [(50.0, 0.1, 0.05), (10.0, 0.6, 0.02)])
def test_2cum_matches_the_compartment_odes(fp, ps, vp):
    t = np.linspace(0, 300, 301)
    ct = K.two_cum(t, weinmann(t), fp=fp, ps=ps, vp=vp)
    ode = _two_compartment_ode(t, weinmann, fp, ps, 1.0, vp, uptake=True)
    np.testing.assert_allclose(ct, ode, atol=2e-6)


def test_mass_balance_area_theorem():
    """Central volume theorem: for a bolus that clears, area(Ct) = (vp + ve) * area(ca)."""
    t = np.linspace(0, 40000, 400001)
    ca = 5.0 * np.exp(-0.5 * ((t - 60.0) / 8.0) ** 2)
    area_ca = np.trapezoid(ca, t)
    for ct, v in [
        (K.tofts(t, ca, ktrans=0.2, ve=0.3), 0.3),
        (K.extended_tofts(t, ca, ktrans=0.2, ve=0.3, vp=0.05), 0.35),
        (K.two_cxm(t, ca, fp=40.0, ps=0.2, ve=0.3, vp=0.05), 0.35),
    ]:
        assert np.trapezoid(ct, t) == pytest.approx(v * area_ca, rel=1e-6)
    # 2CUM: no efflux, the tissue keeps fp * E * area(ca), E = ps/(fp+ps)
    ct = K.two_cum(t, ca, fp=40.0, ps=0.2, vp=0.05)
    fp, ps = 40.0 / 6000, 0.2 / 60
    assert ct[-1] == pytest.approx(fp * ps / (fp + ps) * area_ca, rel=1e-6)


def test_constant_input_steady_states():
    t = np.linspace(0, 20000, 20001)
    ca = np.ones_like(t)
    assert K.tofts(t, ca, ktrans=0.3, ve=0.4)[-1] == pytest.approx(0.4, rel=1e-9)
    assert K.two_cxm(t, ca, fp=30.0, ps=0.3, ve=0.4, vp=0.1)[-1] == pytest.approx(0.5, rel=1e-9)


def test_2cxm_large_flow_limit_is_extended_tofts():
    t = np.linspace(0, 300, 301)
    ca = weinmann(t)
    cx = K.two_cxm(t, ca, fp=1e6, ps=0.15, ve=0.25, vp=0.04)
    et = K.extended_tofts(t, ca, ktrans=0.15, ve=0.25, vp=0.04)
    # from the first sample on (the 2CXM has no instantaneous term at t[0])
    np.testing.assert_allclose(cx[1:], et[1:], atol=2e-6)


def test_2cxm_without_exchange_is_a_plasma_compartment():
    t = np.linspace(0, 300, 301)
    ca = weinmann(t)
    cx = K.two_cxm(t, ca, fp=30.0, ps=0.0, ve=0.25, vp=0.04)
    cu = K.two_cum(t, ca, fp=30.0, ps=0.0, vp=0.04)
    np.testing.assert_allclose(cx, cu, atol=1e-12)


def test_broadcasting_and_per_voxel_aif():
    t = np.linspace(0, 100, 51)
    ca = weinmann(t)
    out = K.extended_tofts(
        t, ca, ktrans=np.array([[0.1], [0.2]]), ve=np.array([0.2, 0.3, 0.4]), vp=0.02
    )
    assert out.shape == (2, 3, 51)
    np.testing.assert_allclose(out[1, 2], K.extended_tofts(t, ca, ktrans=0.2, ve=0.4, vp=0.02))
    per_voxel = np.stack([ca, 2 * ca])
    out2 = K.tofts(t, per_voxel, ktrans=[0.1, 0.1], ve=0.3)
    np.testing.assert_allclose(out2[1], 2 * out2[0], rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    ktrans=st.floats(0.0, 2.0),
    ve=st.floats(0.01, 1.0),
    vp=st.floats(0.0, 0.3),
    scale=st.floats(0.1, 10.0),
)
def test_linear_in_the_aif(ktrans, ve, vp, scale):
    t = np.linspace(0, 300, 101)
    ca = weinmann(t)
    a = K.extended_tofts(t, ca, ktrans=ktrans, ve=ve, vp=vp)
    b = K.extended_tofts(t, scale * ca, ktrans=ktrans, ve=ve, vp=vp)
    np.testing.assert_allclose(b, scale * a, rtol=1e-10, atol=1e-14)
    assert np.all(a >= 0)


@settings(max_examples=50, deadline=None)
@given(
    fp=st.floats(1.0, 300.0),
    ps=st.floats(0.0, 2.0),
    ve=st.floats(0.02, 0.8),
    vp=st.floats(0.005, 0.2),
)
def test_2cxm_is_bounded_by_its_volume_for_a_unit_input(fp, ps, ve, vp):
    t = np.linspace(0, 600, 601)
    ct = K.two_cxm(t, np.ones_like(t), fp=fp, ps=ps, ve=ve, vp=vp)
    assert np.all(np.diff(ct) >= -1e-12)
    assert ct[-1] <= (ve + vp) * (1 + 1e-9)


def test_time_axis_errors():
    ca = np.ones(4)
    with pytest.raises(ValueError, match="not increasing at index 2"):
        K.tofts([0.0, 1.0, 1.0, 2.0], ca, ktrans=0.1, ve=0.2)
    with pytest.raises(ValueError, match="not increasing"):
        K.tofts([3.0, 2.0, 1.0, 0.0], ca, ktrans=0.1, ve=0.2)
    with pytest.raises(ValueError, match="ca has 3 samples but t has 4"):
        K.tofts([0.0, 1.0, 2.0, 3.0], np.ones(3), ktrans=0.1, ve=0.2)
    with pytest.raises(ValueError, match="non-finite"):
        K.tofts([0.0, np.nan, 2.0, 3.0], ca, ktrans=0.1, ve=0.2)


def test_parameter_errors():
    t = np.arange(4.0)
    with pytest.raises(ValueError, match="ktrans=-0.1"):
        K.tofts(t, np.ones(4), ktrans=-0.1, ve=0.2)
    with pytest.raises(ValueError, match="ve=0.0"):
        K.tofts(t, np.ones(4), ktrans=0.1, ve=0.0)
    with pytest.raises(ValueError, match="finite"):
        K.patlak(t, np.ones(4), ktrans=np.nan, vp=0.1)
    with pytest.raises(ValueError, match="expected one of"):
        K.irf_terms("tofs", ktrans=0.1, ve=0.2)
