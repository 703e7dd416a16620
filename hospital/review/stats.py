"""How the models agree with their reviewers: the numbers behind `/audit` and `medge review report`.

Every finding is a positive call by its model (the device sends no finding for a negative), and the latest
verdict on it counts:

- agree: true positive for the finding's label;
- disagree: false positive for the finding's label (the true label is not said);
- corrected label X: false positive for the finding's label, and a missed X (false negative) when the same
  model can say X (it sent findings labelled X).

So **agreement** (agree / reviewed) is computable everywhere and equals **PPV** for a group of findings;
per label, PPV_L = TP_L / (TP_L + FP_L). **Sensitivity** needs the misses: only those that reached the
station as a finding of another label and were corrected to L are seen. A model that sends findings of a
single label (its negatives never become findings) has no observable misses, so its sensitivity cannot be
computed here; where it is computed it counts only the misses reviewers saw, an upper bound.
**Needs-review rate** (needs_review / findings) counts every finding, reviewed or not.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

TREND_DROP = 0.10  # a fall of at least this much agreement across the period is called a downward trend
MIN_TREND_BUCKETS = 3


@dataclass
class Counts:
    findings: int = 0
    needs_review: int = 0
    reviewed: int = 0
    agree: int = 0
    disagree: int = 0
    corrected: int = 0

    def add(self, row: dict[str, Any]) -> None:
        self.findings += 1
        self.needs_review += 1 if row["needs_review"] else 0
        v = row.get("verdict")
        if v:
            self.reviewed += 1
            setattr(self, v, getattr(self, v) + 1)

    @property
    def agreement(self) -> float | None:
        return self.agree / self.reviewed if self.reviewed else None

    @property
    def needs_review_rate(self) -> float | None:
        return self.needs_review / self.findings if self.findings else None


@dataclass
class Group:
    key: str
    counts: Counts = field(default_factory=Counts)
    trend: Trend | None = None


@dataclass
class LabelStats:
    model: str
    label: str
    reviewed: int
    tp: int
    fp: int
    fn_seen: int
    sensitivity_note: str  # empty when sensitivity is computed

    @property
    def ppv(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def sensitivity(self) -> float | None:
        if self.sensitivity_note or not self.tp + self.fn_seen:
            return None
        return self.tp / (self.tp + self.fn_seen)


@dataclass
class Point:
    bucket: str  # label of the period (a day, an ISO week or a month)
    counts: Counts


@dataclass
class Trend:
    first: float
    last: float
    slope: float  # agreement change per period (least squares)

    @property
    def falling(self) -> bool:
        return self.last - self.first <= -TREND_DROP

    def describe(self) -> str:
        arrow = "falling" if self.falling else ("rising" if self.last > self.first else "steady")
        return f"{arrow} ({pct(self.first)} -> {pct(self.last)})"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def model_key(row: dict[str, Any]) -> str:
    return f"{row['model_name']} {row['model_version']}"


KEYS = {"model": model_key, "site": lambda r: r["site"], "device": lambda r: f"{r['site']}/{r['device_id']}"}


def _when(row: dict[str, Any]) -> date:
    return datetime.fromisoformat(str(row["sort_time"]).replace("Z", "+00:00")).date()


def bucket_kind(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "day"
    span = (max(_when(r) for r in rows) - min(_when(r) for r in rows)).days
    return "day" if span <= 14 else "week" if span <= 26 * 7 else "month"


def bucket_of(d: date, kind: str) -> str:
    if kind == "day":
        return d.isoformat()
    if kind == "week":
        return (d - timedelta(days=d.weekday())).isoformat()  # the Monday
    return d.strftime("%Y-%m")


def trend_of(points: list[Point]) -> Trend | None:
    ys = [(i, p.counts.agreement) for i, p in enumerate(points) if p.counts.agreement is not None]
    if len(ys) < MIN_TREND_BUCKETS:
        return None
    n = len(ys)
    mx = sum(i for i, _ in ys) / n
    my = sum(y for _, y in ys) / n
    sxx = sum((i - mx) ** 2 for i, _ in ys)
    slope = sum((i - mx) * (y - my) for i, y in ys) / sxx if sxx else 0.0
    # fitted ends: one noisy period does not make a trend
    first, last = my + slope * (ys[0][0] - mx), my + slope * (ys[-1][0] - mx)
    return Trend(max(0.0, min(1.0, first)), max(0.0, min(1.0, last)), slope)


@dataclass
class Summary:
    rows: int
    bucket: str
    groups: dict[str, list[Group]]  # "model" / "site" / "device" -> groups
    series: dict[str, list[Point]]  # model -> points over time (every period, empty ones too)
    buckets: list[str]
    labels: list[LabelStats]

    @property
    def falling(self) -> list[Group]:
        return [g for kind in ("model", "site", "device") for g in self.groups[kind] if g.trend and g.trend.falling]


def _series(rows: list[dict[str, Any]], key, kind: str, buckets: list[str]) -> dict[str, list[Point]]:
    by: dict[str, dict[str, Counts]] = defaultdict(lambda: defaultdict(Counts))
    for r in rows:
        by[key(r)][bucket_of(_when(r), kind)].add(r)
    return {k: [Point(b, v.get(b, Counts())) for b in buckets] for k, v in sorted(by.items())}


def _all_buckets(rows: list[dict[str, Any]], kind: str) -> list[str]:
    if not rows:
        return []
    d, end, out = min(_when(r) for r in rows), max(_when(r) for r in rows), []
    while d <= end:
        b = bucket_of(d, kind)
        if not out or out[-1] != b:
            out.append(b)
        d += timedelta(days=1)
    return out


def summarize(rows: list[dict[str, Any]]) -> Summary:
    kind = bucket_kind(rows)
    buckets = _all_buckets(rows, kind)
    groups: dict[str, list[Group]] = {}
    series: dict[str, list[Point]] = {}
    for name, key in KEYS.items():
        per = _series(rows, key, kind, buckets)
        out = []
        for k, points in per.items():
            g = Group(k, trend=trend_of(points))
            for p in points:
                for attr in ("findings", "needs_review", "reviewed", "agree", "disagree", "corrected"):
                    setattr(g.counts, attr, getattr(g.counts, attr) + getattr(p.counts, attr))
            out.append(g)
        groups[name] = out
        if name == "model":
            series = per
    return Summary(len(rows), kind, groups, series, buckets, label_stats(rows))


def label_stats(rows: list[dict[str, Any]]) -> list[LabelStats]:
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_model[model_key(r)].append(r)
    out = []
    for model, rs in sorted(by_model.items()):
        labels = sorted({r["label"] for r in rs})
        reviewed = [r for r in rs if r.get("verdict")]
        for label in labels:
            mine = [r for r in reviewed if r["label"] == label]
            tp = sum(1 for r in mine if r["verdict"] == "agree")
            fp = len(mine) - tp
            fn = sum(1 for r in reviewed if r["label"] != label and r["verdict"] == "corrected"
                     and r.get("corrected_label") == label)
            note = "" if len(labels) > 1 else ("not computable: this model sends findings of one label only; its "
                                               "negatives never become findings, so missed cases never reach review")
            out.append(LabelStats(model, label, len(mine), tp, fp, fn, note))
    return out
