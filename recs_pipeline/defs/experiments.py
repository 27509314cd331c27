"""Online metrics of the A/B experiments (exposures attributed to what users did next, per variant) and
the shadow model's unserved lists compared with the served ones."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.models import online_metrics
from recs_pipeline.serving.experiments import ExperimentsFile
from recs_pipeline.settings import DUCKDB_POOL
from recs_pipeline.warehouse.sql import load_sql

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REPORT = "experiments"
SHADOW_REPORT = "shadow"


class OnlineOutcomesConfig(dg.Config):
    """How long after an answer an event still counts, and the bootstrap of the intervals."""

    window_hours: float = 24.0
    n_bootstrap: int = online_metrics.DecisionRule.n_bootstrap
    seed: int = online_metrics.DecisionRule.seed


class ExperimentMetricsConfig(OnlineOutcomesConfig):
    """Attribution window and the decision rule (docs/EXPERIMENTS.md)."""

    min_exposures: int = online_metrics.DecisionRule.min_exposures
    metric: str = online_metrics.DecisionRule.metric
    guardrail: str = online_metrics.DecisionRule.guardrail


def _outcomes(pipeline: PipelineResource, query: str, window_hours: float) -> pl.DataFrame:
    """``sql/<query>.sql`` over every answer logged so far (served up to a day ahead of the clock)."""
    until = datetime.now(UTC) + timedelta(days=1)
    with pipeline.warehouse() as con:
        table = con.sql(
            load_sql(query), params={"since": EPOCH, "until": until, "window_s": window_hours * 3600}
        ).to_arrow_table()
    return pl.DataFrame(pl.from_arrow(table))


def _write_report(folder: Path, name: str, report: dict, text: str) -> str:
    """``<folder>/<name>.json`` and ``.md``; returns the Markdown text."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(report, indent=2))
    (folder / f"{name}.md").write_text(text + "\n")
    return text


@dg.asset(
    group_name="experiments",
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
    deps=["exposures", "events"],
    check_specs=[
        dg.AssetCheckSpec(
            "guardrail",
            asset="experiment_metrics",
            description="No variant of a running experiment is significantly worse than its control on the "
            "guardrail metric (conversion by default).",
        )
    ],
    description="Per experiment and variant: exposures, users, CTR, add-to-cart rate, conversion and revenue per "
    "exposure with cluster-bootstrap intervals over users, differences to the control and a fixed-horizon verdict. "
    "An event is attributed to the exposure its request_id names, else to the user's latest exposure that showed "
    "the item, within window_hours. reports/experiments.{json,md}; numeric metadata per variant plots in the UI.",
)
def experiment_metrics(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, config: ExperimentMetricsConfig
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    s = pipeline.settings
    rule = online_metrics.DecisionRule(
        metric=config.metric,
        guardrail=config.guardrail,
        min_exposures=config.min_exposures,
        n_bootstrap=config.n_bootstrap,
        seed=config.seed,
    )
    outcomes = _outcomes(pipeline, "exposure_outcomes", config.window_hours)
    experiments = ExperimentsFile(s.experiments_file)
    controls = {e.name: next(v.name for v in e.variants if v.control) for e in experiments.experiments}
    report = online_metrics.analyse(outcomes, control_of=controls, rule=rule)
    report["window_hours"] = config.window_hours
    report["exposures"] = outcomes.height
    report["experiments_file_error"] = experiments.error
    text = _write_report(s.reports_dir, REPORT, report, online_metrics.markdown(report))
    metadata: dict = {"exposures": outcomes.height, "report": dg.MetadataValue.md(text)}
    for name, result in report["experiments"].items():
        for variant, entry in result["variants"].items():
            metadata[f"{name}/{variant}/exposures"] = entry["exposures"]
            for metric in online_metrics.METRICS:
                metadata[f"{name}/{variant}/{metric}"] = round(entry[metric]["value"], 6)
    yield dg.MaterializeResult(metadata=metadata)
    failures = online_metrics.guardrail_failures(report)
    yield dg.AssetCheckResult(
        check_name="guardrail",
        passed=not failures,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"worse_on_" + rule.guardrail: dg.MetadataValue.json(failures)},
    )


@dg.asset(
    group_name="experiments",
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
    deps=["exposures", "events"],
    description="The shadow model's lists (scored for live answers, never shown) against the served lists: per "
    "shadow and served variant, answers, users, overlap of the two lists and the rates at which users later "
    "viewed, carted and bought an item of each list within window_hours, with the difference shadow - served "
    "and its paired bootstrap interval over users. reports/shadow.{json,md}.",
)
def shadow_comparison(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, config: OnlineOutcomesConfig
) -> dg.MaterializeResult:
    s = pipeline.settings
    pairs = _outcomes(pipeline, "shadow_outcomes", config.window_hours)
    rule = online_metrics.DecisionRule(n_bootstrap=config.n_bootstrap, seed=config.seed)
    report = online_metrics.compare_shadows(pairs, rule)
    report["window_hours"] = config.window_hours
    report["answers"] = pairs.height
    text = _write_report(s.reports_dir, SHADOW_REPORT, report, online_metrics.shadow_markdown(report))
    metadata: dict = {"answers": pairs.height, "report": dg.MetadataValue.md(text)}
    for shadow, groups in report["shadows"].items():
        for served_as, entry in groups.items():
            metadata[f"{shadow}/{served_as}/overlap"] = round(entry["overlap"], 6)
            for metric in online_metrics.SHADOW_OUTCOMES:
                metadata[f"{shadow}/{served_as}/{metric}_difference"] = round(entry[metric]["difference"]["value"], 6)
    return dg.MaterializeResult(metadata=metadata)
