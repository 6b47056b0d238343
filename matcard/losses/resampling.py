"""imbalanced-learn resamplers for descriptor features behind one function (methods brief §3).

    X_res, y_res = resample(X, y, "smote", random_state=0)

Methods: ``none``, ``random_over``, ``random_under``, ``smote``, ``adasyn``, ``tomek``
(Tomek links), ``enn`` (edited nearest neighbours), ``nearmiss``, ``smote_tomek``,
``smote_enn``. Extra keyword arguments go to the imbalanced-learn class. For SMOTE-family
methods, ``k_neighbors`` is lowered automatically to (smallest class count - 1) when a class
is too small for the default; a class with a single example is an error naming that class.
Only for descriptor (fixed-length vector) features: graphs cannot be interpolated, use
:mod:`matcard.losses.samplers` for them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from matcard.errors import UsageError

RESAMPLERS: dict[str, tuple[str, str]] = {
    "random_over": ("imblearn.over_sampling", "RandomOverSampler"),
    "random_under": ("imblearn.under_sampling", "RandomUnderSampler"),
    "smote": ("imblearn.over_sampling", "SMOTE"),
    "adasyn": ("imblearn.over_sampling", "ADASYN"),
    "tomek": ("imblearn.under_sampling", "TomekLinks"),
    "enn": ("imblearn.under_sampling", "EditedNearestNeighbours"),
    "nearmiss": ("imblearn.under_sampling", "NearMiss"),
    "smote_tomek": ("imblearn.combine", "SMOTETomek"),
    "smote_enn": ("imblearn.combine", "SMOTEENN"),
}
_RANDOMISED = {"random_over", "random_under", "smote", "adasyn", "smote_tomek", "smote_enn"}
_NEIGHBOUR_BASED = {"smote": "k_neighbors", "adasyn": "n_neighbors"}


def resample(
    X: np.ndarray, y: np.ndarray, method: str = "smote", random_state: int | None = 0, **params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Resample descriptor features ``X`` [n, F] with integer labels ``y`` [n]; returns new arrays."""
    import importlib

    key = method.strip().lower().replace("-", "_")
    features = np.asarray(X)
    labels = np.asarray(y).reshape(-1)
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise UsageError(f"X must be [n, F] with one label per row; got X {features.shape}, y {labels.shape}")
    if key == "none":
        return features.copy(), labels.copy()
    if key not in RESAMPLERS:
        raise UsageError(f"unknown resampler {method!r}; choose none, {', '.join(RESAMPLERS)}")
    if not np.isfinite(features).all():
        raise UsageError("X contains NaN or infinite values; impute or drop them before resampling")
    classes, counts = np.unique(labels, return_counts=True)
    if classes.size < 2:
        raise UsageError("resampling needs at least two classes")
    if key in _RANDOMISED:
        params.setdefault("random_state", random_state)
    neighbour_param = _NEIGHBOUR_BASED.get(key) or ("k_neighbors" if key.startswith("smote_") else None)
    if neighbour_param and key in ("smote", "adasyn", "smote_tomek", "smote_enn"):
        smallest = int(counts.min())
        if smallest < 2:
            rare = classes[counts.argmin()]
            raise UsageError(f"{key} cannot synthesise class {rare!r}: it has a single example")
        requested = int(params.get(neighbour_param, 5))
        if key.startswith("smote_"):
            params.pop(neighbour_param, None)
            smote_module = importlib.import_module("imblearn.over_sampling")
            params["smote"] = smote_module.SMOTE(
                k_neighbors=min(requested, smallest - 1), random_state=params.get("random_state")
            )
        else:
            params[neighbour_param] = min(requested, smallest - 1)
    module_name, class_name = RESAMPLERS[key]
    sampler_class = getattr(importlib.import_module(module_name), class_name)
    try:
        sampler = sampler_class(**params)
    except TypeError as error:
        raise UsageError(f"{key}: {error}") from error
    try:
        X_res, y_res = sampler.fit_resample(features, labels)
    except (ValueError, RuntimeError) as error:
        raise UsageError(f"{key} failed on this data: {error}") from error
    return np.asarray(X_res), np.asarray(y_res)
