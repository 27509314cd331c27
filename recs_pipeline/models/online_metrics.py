"""Online metrics of A/B experiments (per variant rates with intervals, differences to the control, a
decision) and of shadow models (their unserved lists against the served ones: :func:`compare_shadows`).

Input: one row per exposure (``sql/exposure_outcomes.sql``) with the experiment, the variant, the
user and the exposure's outcomes (``clicked``, ``carted``, ``purchased``: any attributed event of
that type on a shown item; ``revenue``: the attributed purchases' prices). Per variant:

* ``ctr`` = clicked exposures / exposures, ``cart_rate`` = carted / exposures, ``conversion`` =
  purchased / exposures, ``revenue_per_exposure`` = revenue / exposures;
* 95 % intervals by a **cluster bootstrap over users** (a user's exposures are not independent: whole
  users are resampled, and each rate is the ratio of the resampled sums);
* against the control, the difference of every rate with its interval (users resampled within each
  variant independently, the two arms being disjoint sets of users).

The decision rule is a fixed horizon (:class:`DecisionRule`): until every variant of an experiment
has ``min_exposures`` exposures the verdict is ``collecting``; then a variant is ``better`` or
``worse`` than the control on the rule's metric when the difference's interval excludes zero, else
``no detectable difference``. A ``worse`` verdict on the guardrail metric fails the guardrail check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

OUTCOMES: dict[str, str] = {
    "ctr": "clicked",
    "cart_rate": "carted",
    "conversion": "purchased",
    "revenue_per_exposure": "revenue",
}
METRICS: tuple[str, ...] = tuple(OUTCOMES)
# The rates a shadow list is compared on (a list that was never shown earns no revenue).
SHADOW_OUTCOMES: dict[str, str] = {m: o for m, o in OUTCOMES.items() if m != "revenue_per_exposure"}
COLLECTING, BETTER, WORSE, NO_DIFFERENCE = "collecting", "better", "worse", "no detectable difference"
_BLOCK = 64  # bootstrap resamples drawn at once (memory: block x users)


@dataclass(frozen=True)
class DecisionRule:
    """Fixed horizon: decide once every variant has ``min_exposures``, on ``metric``'s interval."""

    metric: str = "ctr"
    guardrail: str = "conversion"
    min_exposures: int = 1000
    confidence: float = 0.95
    n_bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.metric not in OUTCOMES or self.guardrail not in OUTCOMES:
            raise ValueError(f"decision metrics must be among {METRICS}")
        if self.min_exposures < 1 or not 0 < self.confidence < 1 or self.n_bootstrap < 1:
            raise ValueError("min_exposures >= 1, confidence in (0, 1) and n_bootstrap >= 1 are required")

    def describe(self) -> str:
        return (
            f"fixed horizon: no verdict until every variant has {self.min_exposures} exposures; then a variant "
            f"is better or worse than the control when the {self.confidence:.0%} interval of its {self.metric} "
            f"difference excludes 0 (users resampled {self.n_bootstrap} times); the guardrail fails when a "
            f"variant's {self.guardrail} is worse"
        )


def _per_user(rows: pl.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Exposures per user and each outcome's sum per user (users in a fixed order)."""
    grouped = (
        rows.group_by("user_id")
        .agg(
            pl.len().alias("n"),
            *(pl.col(column).cast(pl.Float64).sum().alias(column) for column in OUTCOMES.values()),
        )
        .sort("user_id")
    )
    return grouped["n"].to_numpy().astype(np.float64), {c: grouped[c].to_numpy() for c in OUTCOMES.values()}


def _bootstrap_ratios(
    n: np.ndarray, sums: dict[str, np.ndarray], rng: np.random.Generator, n_bootstrap: int
) -> dict[str, np.ndarray]:
    """Each outcome's rate over ``n_bootstrap`` user resamples (whole users drawn with replacement)."""
    users = len(n)
    out: dict[str, list[np.ndarray]] = {c: [] for c in sums}
    for start in range(0, n_bootstrap, _BLOCK):
        size = min(_BLOCK, n_bootstrap - start)
        counts = rng.multinomial(users, np.full(users, 1.0 / users), size=size).astype(np.float64)
        exposures = counts @ n
        for column, values in sums.items():
            out[column].append((counts @ values) / exposures)
    return {c: np.concatenate(v) for c, v in out.items()}


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def analyse(outcomes: pl.DataFrame, *, control_of: dict[str, str], rule: DecisionRule) -> dict[str, Any]:
    """Every experiment's per-variant metrics, differences to its control and verdicts.

    ``outcomes``: one row per exposure with ``experiment``, ``variant``, ``user_id`` and the outcome
    columns; rows without an experiment are ignored. ``control_of``: experiment -> its control variant.
    """
    rng = np.random.default_rng(rule.seed)
    report: dict[str, Any] = {"rule": rule.describe(), "experiments": {}}
    rows = outcomes.filter(pl.col("experiment").is_not_null())
    for (experiment,), part in rows.sort("experiment").group_by("experiment", maintain_order=True):
        control = control_of.get(str(experiment))
        variants: dict[str, Any] = {}
        samples: dict[str, dict[str, np.ndarray]] = {}
        for (variant,), arm in part.sort("variant").group_by("variant", maintain_order=True):
            n, sums = _per_user(arm)
            boot = _bootstrap_ratios(n, sums, rng, rule.n_bootstrap)
            samples[str(variant)] = boot
            entry: dict[str, Any] = {"exposures": int(n.sum()), "users": len(n)}
            for metric, column in OUTCOMES.items():
                low, high = _interval(boot[column], rule.confidence)
                entry[metric] = {"value": float(sums[column].sum() / n.sum()), "ci_low": low, "ci_high": high}
            variants[str(variant)] = entry
        ready = all(v["exposures"] >= rule.min_exposures for v in variants.values())
        result: dict[str, Any] = {"control": control, "variants": variants, "ready": ready, "differences": {}}
        if control is not None and control in variants:
            for variant, entry in variants.items():
                if variant == control:
                    continue
                diff: dict[str, Any] = {}
                for metric, column in OUTCOMES.items():
                    value = entry[metric]["value"] - variants[control][metric]["value"]
                    low, high = _interval(samples[variant][column] - samples[control][column], rule.confidence)
                    diff[metric] = {"value": value, "ci_low": low, "ci_high": high}
                diff["verdict"] = _verdict(diff[rule.metric], ready)
                diff["guardrail"] = _verdict(diff[rule.guardrail], ready)
                result["differences"][variant] = diff
        report["experiments"][str(experiment)] = result
    return report


def _verdict(diff: dict[str, float], ready: bool) -> str:
    if not ready:
        return COLLECTING
    if diff["ci_low"] > 0:
        return BETTER
    if diff["ci_high"] < 0:
        return WORSE
    return NO_DIFFERENCE


def guardrail_failures(report: dict[str, Any]) -> list[str]:
    """``experiment/variant`` of every variant significantly worse than its control on the guardrail."""
    return [
        f"{name}/{variant}"
        for name, result in report["experiments"].items()
        for variant, diff in result["differences"].items()
        if diff["guardrail"] == WORSE
    ]


def markdown(report: dict[str, Any], metrics: Sequence[str] = METRICS) -> str:
    """The report as Markdown tables (the asset's metadata and ``recs experiment``)."""
    lines = [f"Decision rule: {report['rule']}.", ""]
    if not report["experiments"]:
        return "\n".join([*lines, "No exposure belongs to an experiment yet."])
    for name, result in report["experiments"].items():
        lines += [f"### {name} (control: {result['control']})", ""]
        lines.append("| variant | exposures | users | " + " | ".join(metrics) + " | verdict | guardrail |")
        lines.append("|---" * (len(metrics) + 5) + "|")
        for variant, entry in result["variants"].items():
            diff = result["differences"].get(variant)
            cells = [f"{entry[m]['value']:.4f} [{entry[m]['ci_low']:.4f}, {entry[m]['ci_high']:.4f}]" for m in metrics]
            verdict = ("control", "") if diff is None else (diff["verdict"], diff["guardrail"])
            lines.append(
                f"| {variant} | {entry['exposures']} | {entry['users']} | "
                + " | ".join(cells)
                + f" | {verdict[0]} | {verdict[1]} |"
            )
        for variant, diff in result["differences"].items():
            cells = [
                f"{m} {diff[m]['value']:+.4f} [{diff[m]['ci_low']:+.4f}, {diff[m]['ci_high']:+.4f}]" for m in metrics
            ]
            lines.append(f"\n{variant} - {result['control']}: " + "; ".join(cells))
        lines.append("")
    return "\n".join(lines)


SHADOW_GROUP = ("shadow", "experiment", "variant")
NOT_IN_EXPERIMENT = "-"  # a served answer outside every experiment


def compare_shadows(pairs: pl.DataFrame, rule: DecisionRule) -> dict[str, Any]:
    """Each shadow's lists against the served ones they shadow (``sql/shadow_outcomes.sql`` rows).

    Per shadow and per served experiment variant: answers paired, users, the shadow and served
    models, ``overlap`` (items both lists hold / the longer list's length, averaged over answers: 1
    = the challenger would have shown the same items) and, for each of the rates ``ctr``,
    ``cart_rate`` and ``conversion``, the served list's and the shadow list's rate (the user later
    viewed, carted, bought one of the list's items) and the difference shadow - served with a paired
    cluster bootstrap over users (both lists' sums from the same resampled users). The served list
    was shown and the shadow list was not, so the served rates carry the effect of being shown.
    """
    rng = np.random.default_rng(rule.seed)
    report: dict[str, Any] = {"shadows": {}}
    if pairs.is_empty():
        return report
    columns = [f"{side}_{outcome}" for side in ("served", "shadow") for outcome in SHADOW_OUTCOMES.values()]
    rows = pairs.with_columns(
        pl.col("experiment").fill_null(NOT_IN_EXPERIMENT),
        pl.col("variant").fill_null(NOT_IN_EXPERIMENT),
        (pl.col("n_common") / pl.max_horizontal("served_items", "shadow_items")).alias("overlap"),
    )
    for (shadow, experiment, variant), part in rows.sort(SHADOW_GROUP).group_by(SHADOW_GROUP, maintain_order=True):
        grouped = (
            part.group_by("user_id")
            .agg(pl.len().alias("n"), *(pl.col(c).cast(pl.Float64).sum() for c in [*columns, "overlap"]))
            .sort("user_id")
        )
        n = grouped["n"].to_numpy().astype(np.float64)
        sums = {c: grouped[c].to_numpy() for c in columns}
        boot = _bootstrap_ratios(n, sums, rng, rule.n_bootstrap)
        entry: dict[str, Any] = {
            "answers": int(n.sum()),
            "users": len(n),
            "served_model_versions": sorted(part["served_model_version"].unique().to_list()),
            "shadow_model_versions": sorted(part["shadow_model_version"].unique().to_list()),
            "overlap": float(grouped["overlap"].sum() / n.sum()),
        }
        for metric, outcome in SHADOW_OUTCOMES.items():
            served, shadowed = f"served_{outcome}", f"shadow_{outcome}"
            low, high = _interval(boot[shadowed] - boot[served], rule.confidence)
            entry[metric] = {
                "served": float(sums[served].sum() / n.sum()),
                "shadow": float(sums[shadowed].sum() / n.sum()),
                "difference": {
                    "value": float((sums[shadowed].sum() - sums[served].sum()) / n.sum()),
                    "ci_low": low,
                    "ci_high": high,
                },
            }
        served_as = NOT_IN_EXPERIMENT if experiment == NOT_IN_EXPERIMENT else f"{experiment}/{variant}"
        report["shadows"].setdefault(str(shadow), {})[served_as] = entry
    return report


def shadow_markdown(report: dict[str, Any]) -> str:
    """The shadow comparison as Markdown tables (the asset's metadata and ``recs experiment``)."""
    if not report["shadows"]:
        return "No shadow list logged yet."
    lines: list[str] = []
    for shadow, groups in report["shadows"].items():
        lines += [
            f"### shadow {shadow}",
            "",
            "Served list against the shadow's list for the same answer; difference = shadow - served with its "
            "interval. The served list was shown, the shadow's was not.",
            "",
            "| served as | answers | users | models (served → shadow) | overlap | "
            + " | ".join(SHADOW_OUTCOMES)
            + " |",
            "|---" * (5 + len(SHADOW_OUTCOMES)) + "|",
        ]
        for served_as, entry in groups.items():
            models = f"{', '.join(entry['served_model_versions'])} → {', '.join(entry['shadow_model_versions'])}"
            cells = []
            for metric in SHADOW_OUTCOMES:
                m, d = entry[metric], entry[metric]["difference"]
                cells.append(
                    f"{m['served']:.4f} → {m['shadow']:.4f} ({d['value']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}])"
                )
            lines.append(
                f"| {served_as} | {entry['answers']} | {entry['users']} | {models} | {entry['overlap']:.3f} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
    return "\n".join(lines)
