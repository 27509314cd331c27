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


def test_shadow_lists_are_compared_with_the_served_ones_and_never_take_an_experiment_event(settings):
    """Served lists i<r>-0..4 and their shadows i<r>-3..7 (2 items shared): a click on a served-only
    item counts for the served list, one on a shadow-only item for the shadow list, one on a shared
    item for both; the experiments' report never sees a shadow list."""
    now = datetime.now(UTC).replace(microsecond=0)
    rng = np.random.default_rng(1)
    exposures, events = [], []
    hits = {"served": 0, "shadow": 0}
    for u in range(300):
        user = f"u{u}"
        for r in range(2):
            request, shown = f"{user}-r{r}", now - timedelta(hours=3 - r)
            served = [f"i{r}-{p}" for p in range(5)]
            shadowed = [f"i{r}-{p}" for p in range(3, 8)]
            for request_id, items, extra in (
                (request, served, {}),
                (
                    f"{request}-shadow",
                    shadowed,
                    {"experiment": "challenger", "variant": "shadow", "shadow_of": request},
                ),
            ):
                exposures.append(
                    {
                        "request_id": request_id,
                        "user_id": user,
                        "ts": shown.isoformat(),
                        "model_version": "v0002" if extra else "v0001",
                        "items": [{"item_id": item, "position": p + 1} for p, item in enumerate(items)],
                        **extra,
                    }
                )
            clicked = rng.choice([None, served[0], shadowed[-1], served[3]], p=[0.4, 0.3, 0.1, 0.2])
            if clicked is not None:
                events.append((f"{request}-click", user, str(clicked), "view", shown + timedelta(minutes=2), None))
                hits["served"] += clicked in served
                hits["shadow"] += clicked in shadowed
    with landing.landing_writer(settings.landing_dir, "exposures", "served.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(e) + "\n" for e in exposures))
    landing.land_frame(
        pl.DataFrame(events, schema=EVENT_SCHEMA, orient="row"), settings.landing_dir, "events", "c.parquet"
    )
    result = CliRunner().invoke(main, ["--home", str(settings.home), "experiment"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "### shadow challenger" in result.output
    assert json.loads((settings.reports_dir / "experiments.json").read_text())["exposures"] == 600  # served only
    report = json.loads((settings.reports_dir / "shadow.json").read_text())
    entry = report["shadows"]["challenger"]["-"]
    assert (entry["answers"], entry["users"]) == (600, 300)
    assert (entry["served_model_versions"], entry["shadow_model_versions"]) == (["v0001"], ["v0002"])
    assert abs(entry["overlap"] - 2 / 5) < 1e-12
    ctr = entry["ctr"]
    assert abs(ctr["served"] - hits["served"] / 600) < 1e-12 and abs(ctr["shadow"] - hits["shadow"] / 600) < 1e-12
    assert ctr["difference"]["ci_low"] < ctr["difference"]["value"] < ctr["difference"]["ci_high"] < 0
    assert entry["conversion"] == {
        "served": 0.0,
        "shadow": 0.0,
        "difference": {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0},
    }
