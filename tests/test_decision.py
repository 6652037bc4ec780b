"""Net benefit and decision curves (medmm_lite.eval.decision), against Vickers & Elkin (2006) by hand."""
import numpy as np
import pytest

from medmm_lite.eval import decision as DC


def test_net_benefit_by_hand():
    # 10 patients, 3 with the disease. At t = 0.2 the model flags p >= 0.2: patients 0,1,2 (two true:
    # 0 and 1) and 5 (false) -> TP = 2, FP = 2; NB = 2/10 - 2/10 * 0.2/0.8 = 0.2 - 0.05 = 0.15.
    y = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.5, 0.3, 0.1, 0.05, 0.2, 0.0, 0.1, 0.15, 0.19])
    assert DC.net_benefit(y, p, [0.2])[0] == pytest.approx(0.15)
    # at t = 0.5: flags 0 and 1 (both true) -> 0.2 - 0 = 0.2
    assert DC.net_benefit(y, p, [0.5])[0] == pytest.approx(0.2)
    # at t = 0.05: flags everyone except patient 6 (p = 0): TP = 3, FP = 6 -> 0.3 - 0.6 * 0.05/0.95
    assert DC.net_benefit(y, p, [0.05])[0] == pytest.approx(0.3 - 0.6 * 0.05 / 0.95)


def test_reference_policies():
    y = np.array([1, 0, 0, 0])
    t = np.array([0.1, 0.25, 0.5])
    np.testing.assert_allclose(DC.treat_all(y, t), 0.25 - 0.75 * t / (1 - t))
    np.testing.assert_allclose(DC.treat_none(t), 0)
    # a model that flags everyone is treat-all; one that flags no one is treat-none
    np.testing.assert_allclose(DC.net_benefit(y, np.ones(4), t), DC.treat_all(y, t))
    np.testing.assert_allclose(DC.net_benefit(y, np.zeros(4), t), 0)


def test_perfect_model_and_useful_range():
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.2).astype(float)
    curve = DC.decision_curve(y, y * 0.98 + 0.01)        # perfect ranking, calibrated-ish
    # above t = 0.01 (the negatives' score) every case is caught with no false positive
    np.testing.assert_allclose(curve["model"][1:], y.mean())
    assert curve["beats_both"][1:].all()
    lo, hi = DC.useful_range(curve)
    assert lo == pytest.approx(0.02) and hi == pytest.approx(0.99)
    noise = DC.decision_curve(y, np.full(500, 0.5))       # flags everyone below 0.5, no one above
    assert DC.useful_range(noise) is None


def test_bad_input():
    with pytest.raises(ValueError):
        DC.net_benefit([0, 1], [0.2, 0.3], [0.0])
    with pytest.raises(ValueError):
        DC.net_benefit([0, 1], [0.2], [0.1])
    with pytest.raises(ValueError):
        DC.net_benefit([0, 2], [0.2, 0.3], [0.1])
