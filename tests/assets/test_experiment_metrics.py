"""The experiment_metrics asset through `recs experiment`: landed exposures and events in, per-variant
metrics, differences to the control and the verdict out (and the guardrail check)."""

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
from click.testing import CliRunner

from recs_pipeline.cli import main
from recs_pipeline.data import landing
from recs_pipeline.data.contract import EVENT_SCHEMA
from recs_pipeline.serving.experiments import bucket


def test_recs_experiment_reports_each_variant_against_the_control(settings):
    now = datetime.now(UTC).replace(microsecond=0)
    settings.experiments_file.write_text(
        json.dumps(
            {
                "experiments": [
                    {
                        "name": "exp",
                        "start": (now - timedelta(days=1)).isoformat(),
                        "end": (now + timedelta(days=1)).isoformat(),
                        "variants": [
                            {"name": "control", "share": 0.5, "control": True},
                            {"name": "better", "share": 0.5, "strategy": "popular"},
                        ],
                    }
                ]
            }
        )
    )
    rng = np.random.default_rng(0)
    exposures, events = [], []
    for u in range(400):
        user = f"u{u}"
        variant = "control" if bucket("exp", user) < 0.5 else "better"
        for r in range(3):
            request, shown = f"{user}-r{r}", now - timedelta(hours=3, minutes=10 * r)
            items = [f"i{(u + r + p) % 50}" for p in range(5)]
            exposures.append(
                {
                    "request_id": request,
                    "user_id": user,
                    "ts": shown.isoformat(),
                    "model_version": "v0001",
                    "experiment": "exp",
                    "variant": variant,
                    "items": [{"item_id": item, "position": p + 1} for p, item in enumerate(items)],
                }
            )
            if rng.random() < (0.4 if variant == "better" else 0.1):  # a click on the second item
                events.append((f"{request}-click", user, items[1], "view", shown + timedelta(minutes=2), None))
    with landing.landing_writer(settings.landing_dir, "exposures", "served.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(e) + "\n" for e in exposures))
    frame = pl.DataFrame(events, schema=EVENT_SCHEMA, orient="row")
    landing.land_frame(frame, settings.landing_dir, "events", "clicks.parquet")
    result = CliRunner().invoke(main, ["--home", str(settings.home), "experiment"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "### exp (control: control)" in result.output
    report = json.loads((settings.reports_dir / "experiments.json").read_text())
    assert report["exposures"] == 1200
    result_exp = report["experiments"]["exp"]
    assert {v: e["exposures"] for v, e in result_exp["variants"].items()} == {
        v: sum(e["variant"] == v for e in exposures) for v in ("better", "control")
    }
    clicks = {
        v: sum(1 for e in events if (bucket("exp", e[1]) < 0.5) == (v == "control"))
        / result_exp["variants"][v]["exposures"]
        for v in ("better", "control")
    }
    for v in ("better", "control"):
        assert abs(result_exp["variants"][v]["ctr"]["value"] - clicks[v]) < 1e-9
    diff = result_exp["differences"]["better"]
    assert diff["ctr"]["ci_low"] > 0  # 0.4 against 0.1, 600 exposures each: clearly better
    assert diff["verdict"] == "collecting"  # fewer than the rule's 1,000 exposures per variant yet
    cached = CliRunner().invoke(main, ["--home", str(settings.home), "experiment", "--no-refresh"])
    assert cached.exit_code == 0 and cached.output == result.output
