"""Metric functions against scikit-learn / scipy and hand-computed values."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from hyperpelt.tasks import metrics as m

T = [0, 1, 1, 0, 1, 1, 0, 0, 1, 1]
P = [0, 1, 0, 0, 1, 1, 1, 0, 1, 0]
YT = [0.0, 1.2, 2.5, 3.8, 5.0, 4.4, 2.0, 0.6]
YP = [0.4, 1.0, 2.9, 3.0, 4.6, 4.8, 1.2, 1.4]


def test_classification_equals_sklearn():
    assert m.accuracy(T, P)["accuracy"] == pytest.approx(100 * skm.accuracy_score(T, P))
    assert m.f1(T, P)["f1"] == pytest.approx(100 * skm.f1_score(T, P))
    assert m.matthews_corrcoef(T, P)["matthews_corrcoef"] == pytest.approx(100 * skm.matthews_corrcoef(T, P))
    multi_t, multi_p = [0, 1, 2, 2, 1, 0], [0, 2, 2, 2, 1, 1]
    assert m.matthews_corrcoef(multi_t, multi_p)["matthews_corrcoef"] == pytest.approx(
        100 * skm.matthews_corrcoef(multi_t, multi_p))


def test_hand_computed():
    # tp=4 fp=1 fn=2 tn=3: acc 7/10, f1 = 8/11, mcc = (12-2)/sqrt(5*6*5*4)
    assert m.accuracy(T, P) == {"accuracy": pytest.approx(70.0)}
    assert m.f1(T, P) == {"f1": pytest.approx(800 / 11)}
    assert m.matthews_corrcoef(T, P)["matthews_corrcoef"] == pytest.approx(1000 / np.sqrt(600))
    assert m.accuracy_and_f1([1, 0], [1, 1]) == pytest.approx({"accuracy": 50.0, "f1": 200 / 3})


def test_correlations_equal_scipy():
    assert m.pearson(YT, YP)["pearson"] == pytest.approx(100 * stats.pearsonr(YT, YP)[0])
    assert m.spearman(YT, YP)["spearman"] == pytest.approx(100 * stats.spearmanr(YT, YP)[0])
    assert m.pearson_and_spearman([1, 2, 3], [2, 4, 6]) == pytest.approx(
        {"pearson": 100.0, "spearman": 100.0}
    )


def test_none_counts_as_wrong():
    assert m.accuracy([1, 0, 1], [1, None, None])["accuracy"] == pytest.approx(100 / 3)
    assert m.f1([1, 0, 1], [1, None, None])["f1"] == pytest.approx(100 * skm.f1_score([1, 0, 1], [1, 1, 0]))
    assert m.accuracy([2, 0, 1], [2, None, None])["accuracy"] == pytest.approx(100 / 3)
    assert m.matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, None])["matthews_corrcoef"] == pytest.approx(
        100 * skm.matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 1]))
    filled = [0.4, 5.0, 2.9, 0.0]
    got = m.pearson(YT[:4], [0.4, None, 2.9, None])["pearson"]
    assert got == pytest.approx(100 * stats.pearsonr(YT[:4], filled)[0])


def test_constant_predictions_give_zero_correlation():
    assert m.pearson(YT, [2.0] * len(YT)) == {"pearson": 0.0}
    assert m.spearman(YT, [2.0] * len(YT)) == {"spearman": 0.0}
    assert m.matthews_corrcoef(T, [1] * len(T)) == {"matthews_corrcoef": 0.0}


def test_length_mismatch_and_empty_are_errors():
    with pytest.raises(ValueError):
        m.accuracy([1, 0], [1])
    with pytest.raises(ValueError):
        m.pearson([], [])
