"""The learner on frozen features: a multinomial logistic regression, fitted to convergence.

On fixed vectors the right learner is a convex one: the same data give the same model whatever the
seed, nothing depends on an epoch count or a learning rate, and there is no dev set to pick an
epoch on. The objective is scikit-learn's `LogisticRegression` with an L2 penalty:

    C * sum_i s_i * CE(softmax(W x_i + b), q_i) + ||W||^2 / 2

with q_i the clip's target distribution (one-hot, or annotator votes), s_i its class weight, and
no penalty on the bias. It is minimised in float64 with L-BFGS (scipy) on the exact gradient.

Speaker-adaptive features (`speaker_standardise`): each clip's vector standardised with its own
speaker's mean and spread, computed over every clip of that speaker that the learner can see
(unlabeled ones included; never a label), shrunk toward the training clips' statistics by
`SPEAKER_PRIOR_CLIPS` pseudo-clips so that a speaker with few clips falls back to the global
standardisation. Test speakers are standardised on their own test clips: a transductive protocol
(no test label is read), named so in reports. Whether a fit uses it ("speaker" view) or not
("clip") can be chosen by the same inner cross-validation that chooses C (`choose_view`): the
view wins only where it generalises to held-out speakers. On corpora whose speakers each show
few emotions (per-speaker statistics then carry the emotion) it loses there, and is not used.

The strength C is chosen by cross-validation inside the labeled training clips only
(`choose_c`): grouped by speaker when there are at least three speakers (so that the choice
rewards what generalises to a new speaker, as the test does), else stratified by label; while a
class has a single labeled clip, the default C is kept. No dev or test clip is used.

Uncertainty over the weights, for BALD and DBAL (`laplace_precision_tril`): the Laplace
approximation of the posterior (MacKay 1992). With the L2 penalty read as a Gaussian prior, the
objective is a negative log posterior; around its minimum it is approximated by a Gaussian with
mean the fitted weights and precision the objective's Hessian,

    H = C * sum_i s_i (diag(p_i) - p_i p_i^T) (x) [x_i; 1][x_i; 1]^T + I,

(the I is the prior's precision on the weights; the bias, unpenalised in the fit, gets the same
unit precision here so that H is invertible: adding one constant to every class's bias changes no
probability, so this costs nothing). The head keeps H's Cholesky factor and draws weight samples
from it when the pool is scored (`FeatureHead.posterior_probs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

# The C grid: scikit-learn's LogisticRegressionCV default is 10 values over 1e-4 .. 1e4; emotion
# features standardised to unit variance never chose below 1e-3 or above 10 on EmoDB.
C_GRID: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
DEFAULT_C = 1.0
MAX_FOLDS = 5
# A speaker's statistics are shrunk toward the global ones by this many pseudo-clips: a speaker with
# one clip is standardised almost as the global standardiser would, one with 100 clips by its own.
SPEAKER_PRIOR_CLIPS = 10.0


@dataclass
class LinearFit:
    mean: np.ndarray  # (D,) the standardiser's
    scale: np.ndarray  # (D,)
    weight: np.ndarray  # (C, D) on standardised inputs
    bias: np.ndarray  # (C,)
    c: float
    iterations: int
    precision_tril: np.ndarray  # (C * (D + 1), C * (D + 1)): Cholesky factor of the Laplace H
    cv: list[dict[str, float]] = field(default_factory=list)  # per C: mean UA of the inner CV
    cv_scheme: str = "none"
    view: str = "clip"  # or "speaker": inputs were speaker-standardised (`speaker_standardise`)
    view_cv: dict[str, float] = field(default_factory=dict)  # per view: best inner-CV UA


def fit_logistic(
    x: np.ndarray,
    targets: np.ndarray,
    sample_weight: np.ndarray,
    c: float,
    *,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(W (C, D), b (C,), iterations) minimising the objective above for standardised `x` (N, D),
    `targets` (N, C) rows summing to 1 and `sample_weight` (N,)."""
    d = x.shape[1]
    k = targets.shape[1]
    x64 = np.asarray(x, dtype=np.float64)
    q = np.asarray(targets, dtype=np.float64)
    s = np.asarray(sample_weight, dtype=np.float64)[:, None]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: k * d].reshape(k, d)
        b = theta[k * d :]
        z = x64 @ w.T + b
        # log-softmax by hand: the same values as scipy's logsumexp (to 1e-15), at half the cost
        # of this function, which is most of the learner's time.
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        total = e.sum(axis=1, keepdims=True)
        log_p = z - np.log(total)
        loss = -c * float((s * q * log_p).sum()) + 0.5 * float((w * w).sum())
        residual = c * s * (e / total * q.sum(axis=1, keepdims=True) - q)  # dLoss/dz
        grad_w = residual.T @ x64 + w
        return loss, np.concatenate([grad_w.ravel(), residual.sum(axis=0)])

    theta0 = (
        np.zeros(k * d + k)
        if init is None
        else np.concatenate([np.asarray(init[0], np.float64).ravel(), np.asarray(init[1])])
    )
    result = minimize(
        objective,
        theta0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-12},
    )
    theta = result.x
    return theta[: k * d].reshape(k, d), theta[k * d :], int(result.nit)


def _folds(
    labels: np.ndarray, groups: Sequence[str] | None
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Inner cross-validation splits of the labeled clips, and how they were made."""
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min()) if len(counts) else 0
    if smallest < 2:  # a class seen once cannot be both learned and tested
        return [], "none (a class has a single clip)"
    if groups is not None and len(set(groups)) >= 3:
        num = min(MAX_FOLDS, len(set(groups)))
        splits = list(GroupKFold(n_splits=num).split(labels, labels, list(groups)))
        return splits, f"{num}-fold by speaker"
    num = min(MAX_FOLDS, smallest)
    splits = list(StratifiedKFold(num, shuffle=True, random_state=0).split(labels, labels))
    return splits, f"{num}-fold stratified"


def _ua(truth: np.ndarray, predicted: np.ndarray) -> float:
    present = np.unique(truth)
    return float(np.mean([(predicted[truth == c] == c).mean() for c in present]))


def choose_c(
    x: np.ndarray,
    targets: np.ndarray,
    sample_weight: np.ndarray,
    groups: Sequence[str] | None,
    grid: Sequence[float] = C_GRID,
) -> tuple[float, list[dict[str, float]], str]:
    """(C with the best mean inner-CV UA, the per-C scores, the scheme). Ties go to the smaller C
    (the simpler model). Each fold standardises with its own training part's statistics."""
    labels = targets.argmax(axis=1)
    splits, scheme = _folds(labels, groups)
    if not splits:
        return DEFAULT_C, [], scheme
    uas: dict[float, list[float]] = {c: [] for c in grid}
    for train, test in splits:
        mean, scale = standardiser(x[train])
        z, z_test = (x[train] - mean) / scale, (x[test] - mean) / scale
        start = None
        # Weakest penalty last, each fit started from the previous one's solution: the optimum
        # moves little from one C to the next, so L-BFGS needs a fraction of the iterations.
        for c in sorted(grid):
            w, b, _ = fit_logistic(z, targets[train], sample_weight[train], c, init=start)
            start = (w, b)
            uas[c].append(_ua(labels[test], (z_test @ w.T + b).argmax(axis=1)))
    scores = [{"c": float(c), "cv_ua": float(np.mean(uas[c]))} for c in grid]
    best = max(scores, key=lambda r: (r["cv_ua"], -r["c"]))
    return best["c"], scores, scheme


def speaker_standardise(
    x: np.ndarray,
    speakers: Sequence[str | None],
    prior: tuple[np.ndarray, np.ndarray],
    prior_clips: float = SPEAKER_PRIOR_CLIPS,
) -> np.ndarray:
    """`x` (N, D) with each row standardised by its speaker's statistics over the rows of `x`
    (so `x` must hold every clip of a speaker that is to count), shrunk toward `prior` (mean,
    variance) by `prior_clips` pseudo-clips. A speaker of None (unknown) is one clip alone."""
    x64 = np.asarray(x, dtype=np.float64)
    prior_mean, prior_var = (np.asarray(a, dtype=np.float64) for a in prior)
    groups: dict[object, list[int]] = {}
    for i, speaker in enumerate(speakers):
        groups.setdefault(("clip", i) if speaker is None else speaker, []).append(i)
    out = np.empty_like(x64)
    for rows in groups.values():
        part = x64[rows]
        n = len(rows)
        mean = (part.sum(axis=0) + prior_clips * prior_mean) / (n + prior_clips)
        var = (((part - mean) ** 2).sum(axis=0) + prior_clips * prior_var) / (n + prior_clips)
        out[rows] = (part - mean) / np.sqrt(np.maximum(var, 1e-12))
    return out


def choose_view(
    views: dict[str, np.ndarray],
    targets: np.ndarray,
    sample_weight: np.ndarray,
    groups: Sequence[str] | None,
) -> tuple[str, float, list[dict[str, float]], str, dict[str, float]]:
    """(view, C, per-C scores, scheme, per-view best score): `choose_c` on each view of the same
    clips (name -> (N, D)); the best inner-CV UA wins, ties going to the first view given (the
    simpler one). Without inner CV (a class with one clip) the first view is kept."""
    best: tuple[str, float, list[dict[str, float]], str] | None = None
    scores: dict[str, float] = {}
    for name, x in views.items():
        c, cv, scheme = choose_c(x, targets, sample_weight, groups)
        if not cv:
            first = next(iter(views))
            return first, c, cv, scheme, {}
        scores[name] = max(r["cv_ua"] for r in cv)
        if best is None or scores[name] > scores[best[0]]:
            best = (name, c, cv, scheme)
    assert best is not None
    return (*best, scores)


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of `x` (N, D); scale 1 for a dimension that is constant on `x`."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    tiny = 10 * np.finfo(np.float32).eps * np.maximum(np.abs(x).max(axis=0), 1.0)
    return mean, np.where(std > tiny, std, 1.0)


def fit_head(
    x: np.ndarray | dict[str, np.ndarray],
    targets: np.ndarray,
    sample_weight: np.ndarray,
    groups: Sequence[str] | None,
    c: float | None = None,
    *,
    posterior: bool = False,
) -> LinearFit:
    """Standardise `x` (N, D), choose C (unless given) by inner cross-validation, then fit on all
    of it; with `posterior`, also the Laplace posterior's Cholesky factor (else zeros). `x` may be
    several views of the same clips (name -> (N, D), e.g. "clip" and "speaker"): the inner CV then
    chooses the view too (`choose_view`), and the fit records which (`LinearFit.view`)."""
    from threadpoolctl import threadpool_limits

    views = x if isinstance(x, dict) else {"clip": x}
    view = next(iter(views))
    cv: list[dict[str, float]] = []
    view_cv: dict[str, float] = {}
    scheme = "fixed"
    # Matrices this small gain nothing from BLAS threads, and lose up to 40x to them on a busy
    # machine (threads spinning for cores that other work holds).
    with threadpool_limits(limits=1, user_api="blas"):
        if c is None:
            view, c, cv, scheme, view_cv = choose_view(views, targets, sample_weight, groups)
        chosen = views[view]
        mean, scale = standardiser(chosen)
        z = (chosen - mean) / scale
        w, b, iterations = fit_logistic(z, targets, sample_weight, c)
        size = w.shape[0] * (w.shape[1] + 1)
        tril = (
            laplace_precision_tril(z, targets, sample_weight, c, w, b)
            if posterior
            else np.zeros((size, size))
        )
    return LinearFit(mean, scale, w, b, c, iterations, tril, cv, scheme, view, view_cv)


def laplace_precision_tril(
    x: np.ndarray,
    targets: np.ndarray,
    sample_weight: np.ndarray,
    c: float,
    weight: np.ndarray,
    bias: np.ndarray,
) -> np.ndarray:
    """Lower Cholesky factor of the Laplace posterior precision H (module docstring) at the
    fitted `weight` (K, D) and `bias` (K,), parameters ordered class by class, each class's
    D weights then its bias: shape (K * (D + 1), K * (D + 1))."""
    n, d = x.shape
    k = weight.shape[0]
    xa = np.hstack([np.asarray(x, dtype=np.float64), np.ones((n, 1))])  # (N, D + 1)
    z = xa @ np.vstack([weight.T, bias[None, :]])
    p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
    w = c * np.asarray(sample_weight, dtype=np.float64) * targets.sum(axis=1)
    h = np.zeros((k, d + 1, k, d + 1))
    for a in range(k):
        for b_ in range(a, k):
            curvature = w * (p[:, a] * ((a == b_) - p[:, b_]))  # (N,)
            block = (xa * curvature[:, None]).T @ xa
            h[a, :, b_, :] = block
            h[b_, :, a, :] = block.T
    size = k * (d + 1)
    h = h.reshape(size, size) + np.eye(size)
    return np.linalg.cholesky(h)
