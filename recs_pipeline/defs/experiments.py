"""Online metrics of the A/B experiments: exposures attributed to what users did next, per variant."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl

from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.models import online_metrics
from recs_pipeline.serving.experiments import ExperimentsFile
from recs_pipeline.settings import DUCKDB_POOL
from recs_pipeline.warehouse.sql import load_sql

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REPORT = "experiments"


class ExperimentMetricsConfig(dg.Config):
    """Attribution window and the decision rule (docs/EXPERIMENTS.md)."""

    window_hours: float = 24.0
    min_exposures: int = online_metrics.DecisionRule.min_exposures
    metric: str = online_metrics.DecisionRule.metric
    guardrail: str = online_metrics.DecisionRule.guardrail
    n_bootstrap: int = online_metrics.DecisionRule.n_bootstrap
    seed: int = online_metrics.DecisionRule.seed


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
    until = datetime.now(UTC) + timedelta(days=1)
    with pipeline.warehouse() as con:
        table = con.sql(
            load_sql("exposure_outcomes"),
            params={"since": EPOCH, "until": until, "window_s": config.window_hours * 3600},
        ).to_arrow_table()
    outcomes = pl.DataFrame(pl.from_arrow(table))
    experiments = ExperimentsFile(s.experiments_file)
    controls = {e.name: next(v.name for v in e.variants if v.control) for e in experiments.experiments}
    report = online_metrics.analyse(outcomes, control_of=controls, rule=rule)
    report["window_hours"] = config.window_hours
    report["exposures"] = outcomes.height
    report["experiments_file_error"] = experiments.error
    s.reports_dir.mkdir(parents=True, exist_ok=True)
    (s.reports_dir / f"{REPORT}.json").write_text(json.dumps(report, indent=2))
    text = online_metrics.markdown(report)
    (s.reports_dir / f"{REPORT}.md").write_text(text + "\n")
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
