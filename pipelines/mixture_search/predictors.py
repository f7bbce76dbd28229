"""Predictors of a mixture's score from its domain weights, and how well they rank unseen mixtures.

Two kinds:
- on the target itself (``bpb_mean``): RegMix's LightGBM and linear baselines and the data-mixing
  law L = c + exp(a + t.w) (Ye et al., 2024);
- ``per_source``: one model per held-out source on that source's bits per byte, the prediction
  being their mean (or the one target source), as Data Mixing Laws fit per validation domain.
  Each source's model is a ridge on log weights (a loss falls as a power of its data's share:
  log-linear) with the penalty chosen by leave-one-out. It pays off where a source answers
  strongly to one domain's weight (uncapped, code's bpb to the code weight); within the
  ``max_repeat`` caps it ranked worse than LightGBM (reports/mixture*.md).

A result is a candidate dict with ``weights`` {domain: w}, ``bpb_mean`` (the target) and ``bpb``
{held-out source: bpb}; ``target`` is "mean" or the source ``bpb_mean`` stands for.
"""
from __future__ import annotations

import numpy as np

LOG_FLOOR = 1e-3  # log(w + floor): a weight of 0 and of 1e-6 train alike


def xy(results: list[dict], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray([[r["weights"][d] for d in names] for r in results], dtype=np.float64)
    return X, np.asarray([r["bpb_mean"] for r in results], dtype=np.float64)


def fit_lightgbm(results: list[dict], names: list[str]):
    import lightgbm as lgb

    X, y = xy(results, names)
    # Tens of points: shallow trees with linear leaves (a linear fit where data is thin, splits where it is not).
    return lgb.LGBMRegressor(n_estimators=100, learning_rate=0.1, num_leaves=4, min_child_samples=3,
                             min_data_in_bin=1, linear_tree=True, linear_lambda=1e-2, verbose=-1,
                             random_state=0).fit(X, y)


def fit_linear(results: list[dict], names: list[str]):
    """RegMix's linear baseline: score ~ a + b . weights (ridge, tiny alpha)."""
    from sklearn.linear_model import Ridge

    X, y = xy(results, names)
    return Ridge(alpha=1e-3).fit(X, y)


class MixingLaw:
    """The data-mixing law of Ye et al. (2024): L(w) = c + exp(a + t . w), fitted by least squares
    (with a small ridge on t; tens of points for a dozen parameters)."""

    def __init__(self, ridge: float = 1e-3):
        self.ridge = ridge

    def fit(self, X: np.ndarray, y: np.ndarray) -> "MixingLaw":
        from scipy.optimize import least_squares

        c0 = float(y.min() - max(y.std(), 1e-3))

        def resid(p):
            return np.concatenate([p[0] + np.exp(p[1] + X @ p[2:]) - y, np.sqrt(self.ridge) * p[2:]])

        p0 = np.concatenate([[c0, np.log(max(y.mean() - c0, 1e-6))], np.zeros(X.shape[1])])
        self.p = least_squares(resid, p0, method="trf").x
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.p[0] + np.exp(self.p[1] + np.asarray(X) @ self.p[2:])


def fit_mixing_law(results: list[dict], names: list[str]) -> MixingLaw:
    return MixingLaw().fit(*xy(results, names))


class PerSource:
    """A log-linear ridge per held-out source (penalty by leave-one-out); predicts the target."""

    def fit(self, results: list[dict], names: list[str]) -> "PerSource":
        from sklearn.linear_model import RidgeCV

        target = results[0].get("target", "mean")
        self.sources = sorted(results[0]["bpb"]) if target == "mean" else [target]
        X = self.features(xy(results, names)[0])
        self.models = [RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(X, [r["bpb"][s] for r in results])
                       for s in self.sources]
        return self

    @staticmethod
    def features(X: np.ndarray) -> np.ndarray:
        return np.log(np.asarray(X, dtype=np.float64) + LOG_FLOOR)

    def predict(self, X: np.ndarray) -> np.ndarray:
        F = self.features(X)
        return np.mean([m.predict(F) for m in self.models], axis=0)


def fit_per_source(results: list[dict], names: list[str]) -> PerSource:
    return PerSource().fit(results, names)


PREDICTORS = {"per_source": fit_per_source, "lightgbm": fit_lightgbm, "linear_regmix": fit_linear,
              "mixing_law": fit_mixing_law}


def holdout_spearman(train: list[dict], test: list[dict], names: list[str]) -> dict:
    """Each predictor fitted on ``train``, Spearman rank correlation of its predictions on ``test``."""
    from scipy.stats import spearmanr

    out = {}
    for name, fit in PREDICTORS.items():
        pred = fit(train, names).predict(xy(test, names)[0])
        out[name] = {"spearman": float(spearmanr(pred, [r["bpb_mean"] for r in test]).statistic),
                     "predictions": [float(x) for x in pred]}
    return out


MEASURED = "measured (search seed)"


def fresh_spearman(held_rho: dict, held: list[dict], fresh: list[float]) -> dict[str, float]:
    """Spearman of each predictor's held-out predictions (``held_rho``, from :func:`holdout_spearman`) with the
    same candidates' scores at fresh seeds; under ``MEASURED``, that of their own search-seed scores."""
    from scipy.stats import spearmanr

    out = {k: float(spearmanr(v["predictions"], fresh).statistic) for k, v in held_rho.items()}
    out[MEASURED] = float(spearmanr([r["bpb_mean"] for r in held], fresh).statistic)
    return out


def compare(results: list[dict], names: list[str]) -> dict:
    """Leave-one-out predictions of every predictor; Spearman rank correlation with the measured scores."""
    from scipy.stats import spearmanr

    if len(results) < 4:
        return {}
    out = {}
    for name, fit in PREDICTORS.items():
        preds = []
        for i in range(len(results)):
            m = fit(results[:i] + results[i + 1:], names)
            preds.append(float(m.predict(xy([results[i]], names)[0])[0]))
        rho = spearmanr(preds, [r["bpb_mean"] for r in results]).statistic
        out[name] = {"spearman_loo": float(rho), "loo_predictions": preds}
    return out
