"""Evaluation reports: JSON for machines, Markdown and a PNG plot for people."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recs_pipeline.models.evaluation import DISCOVERY, PAIRED_METRICS, PROTOCOLS, REPEAT_AWARE, SEGMENTS
from recs_pipeline.models.metrics import DEFAULT_TABLE_METRICS, metrics_table_markdown

PLOT_METRICS = ("ndcg@20", "recall@20")
# The columns of the per-segment tables (the full set is in the JSON).
SEGMENT_METRICS = ("ndcg@20", "recall@20", "precision@20", "hitrate@20", "mrr")
PROTOCOL_TITLES = {REPEAT_AWARE: "Repeat-aware protocol", DISCOVERY: "Discovery protocol"}


# The report's table: the metrics' default columns and the lists' diversity (models/diversity.py), where
# the results have them.
REPORT_TABLE_METRICS: tuple[str, ...] = (*DEFAULT_TABLE_METRICS, "ild@20", "category_coverage@20")


def flatten(result: Mapping[str, Any]) -> dict[str, Any]:
    """``{"ndcg@20": {"value", "ci_low", "ci_high"}}`` -> ``{"ndcg@20": v, "ndcg@20_ci": [lo, hi]}``."""
    out: dict[str, Any] = {}
    for name, value in result.items():
        if isinstance(value, Mapping):
            out[name] = round(float(value["value"]), 6)
            out[f"{name}_ci"] = [round(float(value["ci_low"]), 6), round(float(value["ci_high"]), 6)]
        else:
            out[name] = value
    return out


def write_evaluation(
    folder: Path,
    *,
    test: Mapping[str, Mapping[str, Any]],
    valid: Mapping[str, Mapping[str, Any]],
    windows: Mapping[str, Any],
    users: int,
    population: int,
    dataset: str,
    protocols: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``evaluation.json`` (one object per method, plus windows, users and how they were chosen),
    ``evaluation.md`` and ``evaluation.png``.

    ``test`` and ``valid`` are the repeat-aware tables (``{method: evaluate result}``): the JSON's
    top-level method objects are the test table's, ``"validation"`` the valid table's, and the plot
    shows the test table. ``protocols`` (``{fold: evaluation.evaluate_fold result}``, folds
    ``"test"`` and ``"valid"``) adds the JSON's ``"protocols"`` object (:func:`protocols_json`) and
    the Markdown's per-protocol tables, paired differences and segments (of the test fold).

    ``users`` were evaluated out of the ``population`` users of the test window (a seeded sample when
    fewer); the report says so next to the intervals, which are bootstrap intervals over the
    evaluated users.
    """
    folder.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {name: flatten(m) for name, m in test.items()}
    report["windows"] = dict(windows)
    report["users"] = users
    report["users_in_window"] = population
    report["sampled"] = users < population
    report["intervals"] = intervals_note(users, population)
    report["dataset"] = dataset
    report["validation"] = {name: flatten(m) for name, m in valid.items()}
    if protocols is not None:
        report["protocols"] = {fold: protocols_json(result) for fold, result in protocols.items()}
    json_path = folder / "evaluation.json"
    json_path.write_text(json.dumps(report, indent=2))
    md = evaluation_markdown(
        test,
        windows=windows,
        users=users,
        population=population,
        dataset=dataset,
        protocols=None if protocols is None else protocols.get("test"),
    )
    md_path = folder / "evaluation.md"
    md_path.write_text(md)
    png_path = folder / "evaluation.png"
    plot(test, png_path)
    return {"json": json_path, "markdown": md_path, "plot": png_path}


def intervals_note(users: int, population: int) -> str:
    """Who was evaluated and what the intervals are, in one sentence."""
    if users < population:
        return (
            f"{users} users sampled at random (seeded) of the {population} in the test window; figures and "
            f"95% bootstrap intervals come from the sample"
        )
    return f"all {users} users of the test window; 95% bootstrap intervals over users"


def protocols_json(fold_result: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One fold's :func:`~recs_pipeline.models.evaluation.evaluate_fold` result for the JSON report.

    Per protocol: ``relevant`` (what counts), ``users``, ``best_baseline``, ``methods``
    (``{method: flatten(result)}``), ``differences`` (``{method: {"ndcg@20": v, "ndcg@20_ci": [lo,
    hi], ...}}``, the method minus the best baseline) and ``segments`` (``{segment: {"users", "note",
    "methods"}}``).
    """
    out: dict[str, Any] = {}
    for protocol, result in fold_result.items():
        out[protocol] = {
            "relevant": result["relevant"],
            "users": result["users"],
            "best_baseline": result["best_baseline"],
            "methods": {m: flatten(r) for m, r in result["methods"].items()},
            "differences": {m: flatten(d) for m, d in result["differences"].items()},
            "segments": {
                name: {
                    "users": seg["users"],
                    "note": seg["note"],
                    "methods": {m: flatten(r) for m, r in seg["methods"].items()},
                }
                for name, seg in result["segments"].items()
            },
        }
    return out


def _table_metrics(results: Mapping[str, Mapping[str, Any]], wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The metrics of ``wanted`` that every method's result has (results from before a metric was added lack it)."""
    return tuple(m for m in wanted if all(m in r for r in results.values()))


def _signed(cell: Mapping[str, float]) -> str:
    return f"{cell['value']:+.4f} [{cell['ci_low']:+.4f}, {cell['ci_high']:+.4f}]"


def differences_markdown(
    differences: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    against: str,
    metrics: tuple[str, ...] = PAIRED_METRICS,
) -> str:
    """A Markdown table of paired differences (method minus ``against``), ``value [ci_low, ci_high]``."""
    lines = [
        f"| method − {against} | " + " | ".join(f"Δ {m}" for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for method, diff in differences.items():
        lines.append(f"| {method} | " + " | ".join(_signed(diff[m]) for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def protocol_markdown(protocol: str, result: Mapping[str, Any]) -> str:
    """One protocol's section: what counts, the methods' table, the differences, the segments."""
    title = PROTOCOL_TITLES.get(protocol, protocol)
    parts = [f"## {title} ({result['users']} users)\n\nRelevant: {result['relevant']}\n"]
    methods = result["methods"]
    if not methods:
        parts.append("No user has a relevant item under this protocol.\n")
        return "\n".join(parts)
    parts.append(metrics_table_markdown(methods, metrics=_table_metrics(methods, REPORT_TABLE_METRICS)))
    best = result["best_baseline"]
    parts.append(
        f"Differences against the best baseline, **{best}** (by ndcg@20): mean per-user difference with 95% "
        "paired bootstrap intervals (both methods on the same resampled users).\n"
    )
    parts.append(differences_markdown(result["differences"], against=best))
    parts.append(f"### {title}: segments\n")
    for name in SEGMENTS:
        seg = result["segments"].get(name)
        if seg is None:
            continue
        label = name.replace("_", " ")
        if not seg["users"]:
            parts.append(f"**{label}** ({seg['note']}): no users.\n")
            continue
        parts.append(f"**{label}** ({seg['note']}): {seg['users']} users.\n")
        parts.append(metrics_table_markdown(seg["methods"], metrics=_table_metrics(seg["methods"], SEGMENT_METRICS)))
    return "\n".join(parts)


def evaluation_markdown(
    results: Mapping[str, Mapping[str, Any]],
    *,
    windows: Mapping[str, Any],
    users: int,
    population: int,
    dataset: str,
    protocols: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The report's Markdown: the repeat-aware test table alone, or (``protocols``: the test fold's
    :func:`~recs_pipeline.models.evaluation.evaluate_fold` result) a section per protocol."""
    test = windows.get("test", {})
    head = (
        f"Test window {test.get('labels_from', '?')} .. {test.get('labels_until', '?')}, "
        f"{intervals_note(users, population)}; data: {dataset}. Full-catalog ranking.\n\n"
    )
    if protocols is None:
        return head + metrics_table_markdown(dict(results), metrics=_table_metrics(results, REPORT_TABLE_METRICS))
    order = [p for p in PROTOCOLS if p in protocols] + [p for p in protocols if p not in PROTOCOLS]
    return head + "\n".join(protocol_markdown(p, protocols[p]) for p in order)


def plot(results: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Bar chart of NDCG@20 and Recall@20 per method with bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(results)
    fig, axes = plt.subplots(1, len(PLOT_METRICS), figsize=(5 * len(PLOT_METRICS), 3.5))
    for ax, metric in zip(axes, PLOT_METRICS, strict=True):
        values = [results[m][metric]["value"] for m in methods]
        low = [v - results[m][metric]["ci_low"] for v, m in zip(values, methods, strict=True)]
        high = [results[m][metric]["ci_high"] - v for v, m in zip(values, methods, strict=True)]
        ax.bar(methods, values, yerr=[low, high], capsize=4, color="#4b6fa5")
        ax.set_title(metric)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def bars_markdown(
    results: Mapping[str, Mapping[str, Any]], *, metrics: tuple[str, ...] = PLOT_METRICS, width: int = 40
) -> str:
    """A text bar chart per metric (Dagster's Markdown renders no embedded images), with the intervals."""
    blocks = []
    for metric in metrics:
        top = max((r[metric]["value"] for r in results.values()), default=0.0) or 1.0
        lines = [f"**{metric}** (95% interval)", "```"]
        for name, r in results.items():
            v = r[metric]
            bar = "█" * round(width * v["value"] / top)
            lines.append(f"{name:>14} {bar:<{width}} {v['value']:.4f} [{v['ci_low']:.4f}, {v['ci_high']:.4f}]")
        lines.append("```")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def curve_markdown(curve: Mapping[str, list[float]], *, every: int = 10) -> str:
    """The training curve (NDCG per boosting round) as a Markdown table, every ``every`` rounds."""
    rounds = len(curve["valid"])
    rows = [r for r in range(1, rounds + 1) if r == 1 or r % every == 0 or r == rounds]
    lines = ["| round | train ndcg | valid ndcg |", "|---|---|---|"]
    lines += [f"| {r} | {curve['train'][r - 1]:.4f} | {curve['valid'][r - 1]:.4f} |" for r in rows]
    return "\n".join(lines)
