r"""Per-class results of a classifier run, from its ``confusion`` and ``classes`` records.

Part of the analysis (:mod:`rnnprobe.analysis.runs` puts the result on ``RunSummary.classes``):
every per-class number a report shows is computed here, once. With ``n_ij`` the validation
sequences of true class i predicted as j at the last evaluation step:

* accuracy of class i (its recall) ``n_ii / Σ_j n_ij``; NaN for a class without validation
  examples;
* overall accuracy ``Σ_i n_ii / Σ_ij n_ij`` (the ``evals`` metric of that step);
* balanced accuracy: the mean of the per-class accuracies over classes with examples;
* the row-normalised matrix ``n_ij / Σ_j n_ij``: the share of class i's examples given j.

A missing ``classes`` table (a synthetic task such as ``recall``) names classes by their id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["ClassScores", "class_scores"]


@dataclass(frozen=True, eq=False)
class ClassScores:
    """A classifier's validation results per class at one evaluation ``step``.

    ``counts`` is (K, K): rows the true class, columns the prediction, both labelled by class
    name in class-id order; ``per_class`` has one row per class: ``class``, ``name``,
    ``train_examples``, ``valid_examples``, ``correct``, ``accuracy``.
    """

    step: int
    counts: pd.DataFrame
    per_class: pd.DataFrame
    accuracy: float
    balanced_accuracy: float
    truncated: int  # examples cut to the padded length (both splits); 0 when not recorded
    majority: str | None  # the training split's most frequent class, when recorded

    @property
    def names(self) -> list[str]:
        """Return the class names in class-id order."""
        return list(self.counts.index)

    @property
    def normalised(self) -> pd.DataFrame:
        """Return the counts divided by their row sums (NaN rows for classes without examples)."""
        totals = self.counts.sum(axis=1).replace(0, np.nan)
        return self.counts.div(totals, axis=0)


def class_scores(confusion: pd.DataFrame, classes: pd.DataFrame) -> ClassScores | None:
    """Return the scores at the last step of ``confusion``, or None without confusion rows."""
    needed = {"step", "true", "predicted", "count"}
    if confusion is None or confusion.empty or not needed <= set(confusion.columns):
        return None
    data = confusion[list(needed)].apply(pd.to_numeric, errors="coerce").dropna()
    if data.empty:
        return None
    step = int(data["step"].max())
    last = data[data["step"] == step].astype(int)
    K = int(max(last["true"].max(), last["predicted"].max())) + 1
    names = [str(i) for i in range(K)]
    train = np.full(K, np.nan)
    truncated, majority = 0, None
    if classes is not None and {"class", "name"} <= set(classes.columns) and len(classes):
        ids = pd.to_numeric(classes["class"]).astype(int).to_numpy()
        K = max(K, int(ids.max()) + 1)
        names = [str(i) for i in range(K)]
        train = np.full(K, np.nan)
        for i, name in zip(ids, classes["name"], strict=True):
            names[i] = str(name)
        if "train_examples" in classes:
            train[ids] = pd.to_numeric(classes["train_examples"], errors="coerce").to_numpy(float)
            if np.isfinite(train).any():
                majority = names[int(np.nanargmax(train))]
        if "truncated" in classes:
            truncated = int(pd.to_numeric(classes["truncated"], errors="coerce").fillna(0).sum())
    matrix = np.zeros((K, K), dtype=np.int64)
    np.add.at(matrix, (last["true"].to_numpy(), last["predicted"].to_numpy()), last["count"])
    support = matrix.sum(axis=1)
    correct = np.diag(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class_accuracy = np.where(support > 0, correct / np.maximum(support, 1), np.nan)
    total = int(support.sum())
    has = support > 0
    per_class = pd.DataFrame(
        {
            "class": np.arange(K),
            "name": names,
            "train_examples": train,
            "valid_examples": support,
            "correct": correct,
            "accuracy": per_class_accuracy,
        }
    )
    return ClassScores(
        step=step,
        counts=pd.DataFrame(matrix, index=pd.Index(names, name="true"), columns=names),
        per_class=per_class,
        accuracy=float(correct.sum() / total) if total else math.nan,
        balanced_accuracy=float(per_class_accuracy[has].mean()) if has.any() else math.nan,
        truncated=truncated,
        majority=majority,
    )
