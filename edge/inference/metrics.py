"""Clinical accuracy metrics in plain numpy (no sklearn anywhere).

The accuracy gate compares FP32 and INT8 with the numbers a clinical reviewer reads: AUROC and
sensitivity/specificity at the manifest threshold for classifiers, Dice/IoU/area error for segmentation,
recall/precision at IoU 0.5 for detection. Agreement (same decision FP32 vs INT8) catches a shifted
operating point that AUROC alone would hide.
"""

from __future__ import annotations

import numpy as np

LOWER_IS_BETTER = frozenset({"area_error"})


def mean(vals: list) -> float | None:
    """Mean of the values that exist (metrics are None where undefined, e.g. AUROC with one class)."""
    v = [x for x in vals if x is not None]
    return float(np.mean(v)) if v else None


def auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Mann-Whitney AUROC with tie correction; None when only one class is present."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, np.float64)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), np.float64)
    s = score[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def classification(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float | None]:
    y = np.asarray(y).astype(bool)
    pred = np.asarray(score) >= threshold
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())
    return {
        "auroc": auroc(y, score),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "accuracy": (tp + tn) / max(1, len(y)),
    }


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of cases where two models make the same decision."""
    a, b = np.asarray(a), np.asarray(b)
    return float((a == b).mean()) if a.size else 1.0


def segmentation(gt: list[np.ndarray], pred: list[np.ndarray]) -> dict[str, float]:
    """Mean per-image Dice and IoU (empty-vs-empty counts as 1) and mean relative area error."""
    dice, iou, area = [], [], []
    for g, p in zip(gt, pred, strict=True):
        g, p = g.astype(bool), p.astype(bool)
        inter, gs, ps = int((g & p).sum()), int(g.sum()), int(p.sum())
        union = gs + ps - inter
        dice.append(1.0 if gs + ps == 0 else 2.0 * inter / (gs + ps))
        iou.append(1.0 if union == 0 else inter / union)
        area.append(abs(ps - gs) / gs if gs else (0.0 if ps == 0 else 1.0))
    return {"dice": float(np.mean(dice)), "iou": float(np.mean(iou)), "area_error": float(np.mean(area))}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between (N,4) and (M,4) xyxy boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def detection(gt: list[np.ndarray], pred: list[np.ndarray], iou_thr: float = 0.5) -> dict[str, float | None]:
    """Recall and precision at IoU >= iou_thr with greedy, score-ordered, same-label matching.

    gt rows: x0 y0 x1 y1 label; pred rows: x0 y0 x1 y1 label score.
    """
    tp = n_gt = n_pred = 0
    for g, p in zip(gt, pred, strict=True):
        g = np.asarray(g, np.float64).reshape(-1, 5)
        p = np.asarray(p, np.float64).reshape(-1, 6)
        n_gt += len(g)
        n_pred += len(p)
        if not len(g) or not len(p):
            continue
        p = p[np.argsort(-p[:, 5])]
        ious = box_iou(p[:, :4], g[:, :4])
        used = np.zeros(len(g), bool)
        for i in range(len(p)):
            cand = np.where(~used & (g[:, 4] == p[i, 4]) & (ious[i] >= iou_thr))[0]
            if cand.size:
                used[cand[np.argmax(ious[i, cand])]] = True
                tp += 1
    return {"recall": tp / n_gt if n_gt else None, "precision": tp / n_pred if n_pred else None}
