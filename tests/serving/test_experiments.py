"""A/B experiments: the file's rules, deterministic independent buckets, and the service running them."""

import json
import os
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from homes import copy_home

from recs_pipeline.models.candidate_sources import SOURCES
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.serving.app import create_app
from recs_pipeline.serving.experiments import (
    CHECK_SECONDS,
    ExperimentError,
    ExperimentsFile,
    bucket,
    parse,
    parse_file,
)
from recs_pipeline.settings import ServeSettings

NOW = datetime.now(UTC)


def window(days: float = 1) -> dict:
    return {"start": (NOW - timedelta(days=days)).isoformat(), "end": (NOW + timedelta(days=days)).isoformat()}


def shadow(name: str = "challenger", **over) -> dict:
    return {"name": name, "model_version": "v0002", "share": 1.0, **window(), **over}


def experiment(name: str = "exp", **over) -> dict:
    return {
        "name": name,
        **window(),
        "variants": [{"name": "control", "share": 0.5, "control": True}, {"name": "b", "share": 0.5}],
        **over,
    }


def test_buckets_are_sticky_uniform_and_independent_across_experiments():
    users = [f"user-{i}" for i in range(20_000)]
    a = np.array([bucket("first", u) for u in users])
    assert a.tolist() == [bucket("first", u) for u in users]  # a pure function of (experiment, user)
    assert ((a >= 0) & (a < 1)).all()
    assert abs((a < 0.5).mean() - 0.5) < 0.015 and abs((a < 0.1).mean() - 0.1) < 0.01
    b = np.array([bucket("second", u) for u in users])
    both = ((a < 0.5) & (b < 0.5)).mean()
    assert abs(both - 0.25) < 0.015  # independent: being in A's control says nothing about B
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03


def test_assignment_follows_the_shares():
    [exp] = parse(
        {
            "experiments": [
                experiment(
                    variants=[
                        {"name": "control", "share": 0.8, "control": True},
                        {"name": "small", "share": 0.2, "strategy": "popular"},
                    ]
                )
            ]
        }
    )
    counts = {"control": 0, "small": 0}
    for i in range(10_000):
        counts[exp.assign(f"u{i}").name] += 1
    assert abs(counts["small"] / 10_000 - 0.2) < 0.015
    assert exp.assign("u1") == exp.assign("u1")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "must be an object"),
        ({"experiments": [experiment(name="")]}, "name"),
        ({"experiments": [experiment(start="yesterday")]}, "not an ISO-8601 time"),
        ({"experiments": [experiment(start="2026-12-01T00:00:00")]}, "no UTC offset"),
        ({"experiments": [experiment(end=window()["start"], start=window()["end"])]}, "not after start"),
        ({"experiments": [experiment(variants=[{"name": "c", "share": 1.0, "control": True}])]}, "at least two"),
        (
            {"experiments": [experiment(variants=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}])]},
            "exactly one variant must be the control",
        ),
        (
            {
                "experiments": [
                    experiment(variants=[{"name": "a", "share": 0.5, "control": True}, {"name": "b", "share": 0.4}])
                ]
            },
            "shares sum to 0.9",
        ),
        (
            {
                "experiments": [
                    experiment(
                        variants=[{"name": "a", "share": 0.5, "control": True}, {"name": "b", "share": 0.5, "x": 1}]
                    )
                ]
            },
            "unknown fields",
        ),
        (
            {
                "experiments": [
                    experiment(
                        variants=[
                            {"name": "a", "share": 0.5, "control": True},
                            {"name": "b", "share": 0.5, "strategy": "random"},
                        ]
                    )
                ]
            },
            "strategy",
        ),
        (
            {
                "experiments": [
                    experiment(
                        variants=[
                            {"name": "a", "share": 0.5, "control": True},
                            {"name": "b", "share": 0.5, "limits": {"als": 10}},
                        ]
                    )
                ]
            },
            "every source",
        ),
        ({"experiments": [experiment("x"), experiment("y")]}, "overlap in time"),
        ({"experiments": [experiment("x"), experiment("x", start=window(9)["end"], end=window(19)["end"])]}, "repeat"),
        (
            {
                "experiments": [
                    experiment(
                        variants=[
                            {"name": "a", "share": 0.5, "control": True},
                            {"name": "b", "share": 0.5, "diversity": -0.5},
                        ]
                    )
                ]
            },
            "diversity",
        ),
        ({"experiments": [], "shadows": []}, "unknown top-level fields"),
        ({"experiments": [], "shadow": shadow(model_version="")}, "shadow.model_version"),
        ({"experiments": [], "shadow": shadow(share=0)}, r"shadow.share: a number in \(0, 1\]"),
        ({"experiments": [], "shadow": shadow(end=window()["start"])}, "shadow: end"),
        ({"experiments": [], "shadow": shadow(variant="x")}, "shadow: unknown fields"),
        ({"experiments": [], "shadow": shadow(limits={"als": 5})}, "shadow.limits"),
        ({"experiments": [experiment("same")], "shadow": shadow("same")}, "also an experiment's name"),
    ],
)
def test_an_invalid_file_is_refused_with_the_reason(raw, message):
    with pytest.raises(ExperimentError, match=message):
        parse(raw)


def test_a_shadow_samples_its_share_of_users_inside_its_window():
    experiments, parsed = parse_file({"experiments": [], "shadow": shadow(share=0.25)})
    assert experiments == () and parsed is not None and parsed.model_version == "v0002"
    sampled = [parsed.samples(f"u{i}", NOW) for i in range(10_000)]
    assert abs(sum(sampled) / 10_000 - 0.25) < 0.015
    assert sampled == [parsed.samples(f"u{i}", NOW) for i in range(10_000)]  # sticky per user
    # independent of an experiment's buckets: the shadow's name is its own hash key
    assert sampled != [bucket("exp", f"u{i}") < 0.25 for i in range(10_000)]
    assert not any(parsed.samples(f"u{i}", NOW + timedelta(days=2)) for i in range(100))  # after its end
    assert parse_file({"experiments": []})[1] is None


def test_the_file_is_reread_when_it_changes_and_a_bad_edit_keeps_the_last_good_one(tmp_path):
    path = tmp_path / "experiments.json"
    experiments = ExperimentsFile(path, check_seconds=0)
    assert experiments.active(NOW) is None and experiments.error is None
    path.write_text(json.dumps({"experiments": [experiment("first")]}))
    assert experiments.active(NOW).name == "first"
    assert experiments.active(NOW + timedelta(days=2)) is None  # after its end
    path.write_text("{not json")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert experiments.active(NOW).name == "first" and "experiments.json" in experiments.error
    path.write_text(json.dumps({"experiments": [experiment("second")]}))
    assert experiments.active(NOW).name == "second" and experiments.error is None
    path.unlink()
    assert experiments.active(NOW) is None


@pytest.mark.integration
def test_the_service_runs_an_experiment_without_a_restart(served_home, tmp_path):
    home = copy_home(served_home, tmp_path / "home")
    champion = ModelRegistry(home.models_dir).champion().version
    spec = experiment(
        "ranker-vs-popular",
        variants=[
            {"name": "ranked", "share": 0.5, "control": True, "model_version": champion, "diversity": 2.0},
            {"name": "popular", "share": 0.5, "strategy": "popular"},
        ],
    )
    app = create_app(home, ServeSettings(online_timeout_ms=2000))
    with TestClient(app) as client:
        plain = client.get("/recommendations/user-0", params={"k": 5}).json()
        assert plain["experiment"] is None and plain["variant"] is None
        home.experiments_file.write_text(json.dumps({"experiments": [spec]}))
        time.sleep(CHECK_SECONDS + 0.1)  # the file is looked at every CHECK_SECONDS
        [exp] = parse({"experiments": [spec]})
        answers = {f"user-{i}": client.get(f"/recommendations/user-{i}", params={"k": 5}).json() for i in range(40)}
        popular_lists = set()
        for user, answer in answers.items():
            assert answer["experiment"] == "ranker-vs-popular"
            assert answer["variant"] == exp.assign(user).name
            assert answer["model_version"] == champion
            assert answer["diversity"] == (2.0 if answer["variant"] == "ranked" else 0.0)
            if answer["variant"] == "popular":
                assert {i["source"] for i in answer["items"]} == {"popular"}
                popular_lists.add(tuple(i["item_id"] for i in answer["items"]))
        assert {a["variant"] for a in answers.values()} == {"ranked", "popular"}
        assert len(popular_lists) == 1  # users without history: the same global list
        # sticky: the same user gets the same variant again
        again = client.get("/recommendations/user-1", params={"k": 5}).json()
        assert again["variant"] == answers["user-1"]["variant"]
        # a variant pinned to a version that does not exist: the champion answers, flagged
        broken = {**spec, "variants": [{**spec["variants"][0], "model_version": "v9999", "share": 1.0}]}
        broken["variants"].append({"name": "other", "share": 0.0001, "strategy": "popular"})
        broken["variants"][0]["share"] = 0.9999
        home.experiments_file.write_text(json.dumps({"experiments": [broken]}))
        time.sleep(CHECK_SECONDS + 0.1)
        flagged = [client.get(f"/recommendations/user-{i}", params={"k": 5}).json() for i in range(5)]
        ranked = [a for a in flagged if a["variant"] == "ranked"]
        assert ranked and all("variant_model_unavailable" in a["fallback_reasons"] for a in ranked)
        # switched off without a restart
        home.experiments_file.unlink()
        time.sleep(CHECK_SECONDS + 0.1)
        assert client.get("/recommendations/user-0", params={"k": 5}).json()["experiment"] is None
    exposures = [
        json.loads(line)
        for path in (home.landing_dir / "exposures").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    by_id = {e["request_id"]: e for e in exposures}
    for answer in answers.values():
        assert (by_id[answer["request_id"]]["experiment"], by_id[answer["request_id"]]["variant"]) == (
            "ranker-vs-popular",
            answer["variant"],
        )


def _landed_exposures(home) -> list[dict]:
    return [
        json.loads(line)
        for path in (home.landing_dir / "exposures").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]


def _write_shadow(home, spec: dict) -> None:
    home.experiments_file.write_text(json.dumps({"experiments": [], "shadow": spec}))
    time.sleep(CHECK_SECONDS + 0.1)  # the file is looked at every CHECK_SECONDS


@pytest.mark.integration
def test_a_shadow_model_scores_answers_off_the_request_path_and_its_lists_are_logged(served_home, tmp_path):
    home = copy_home(served_home, tmp_path / "home")
    for path in (home.landing_dir / "exposures").glob("*.jsonl"):  # other tests' lists, landed in the session home
        path.unlink()
    champion = ModelRegistry(home.models_dir).champion().version
    profiles = pl.read_parquet(home.features_dir / "user_profile.parquet")
    users = profiles.sort(pl.col("hist_item_ids").list.len(), descending=True)["user_id"].unique(maintain_order=True)
    users = users.head(12).to_list()
    popular_only = {source: 0 for source in SOURCES} | {"popular": 20}
    app = create_app(home, ServeSettings(online_timeout_ms=2000, exposure_flush_seconds=60))
    with TestClient(app) as client:
        scorer = app.state.parts["shadow"]
        # the champion as its own shadow: the same inputs give the same list
        _write_shadow(home, shadow("same", model_version=champion))
        same = {u: client.get(f"/recommendations/{u}", params={"k": 10}).json() for u in users}
        scorer.join()
        # a challenger that differs: popularity alone
        _write_shadow(home, shadow("popular-only", model_version=champion, limits=popular_only))
        other = {u: client.get(f"/recommendations/{u}", params={"k": 10}).json() for u in users}
        scorer.join()
        # a shadow that cannot load: answers are untouched, the miss is counted
        _write_shadow(home, shadow("missing", model_version="v9999"))
        missing = [client.get(f"/recommendations/{u}", params={"k": 10}) for u in users[:3]]
        scorer.join()
        assert all(r.status_code == 200 and r.json()["fallback_reasons"] == [] for r in missing)
        metrics = client.get("/metrics").text
    assert f'recs_shadow_total{{outcome="scored"}} {2.0 * len(users)}' in metrics
    assert 'recs_shadow_total{outcome="unavailable"} 3.0' in metrics
    landed = _landed_exposures(home)
    shadows = {e["shadow_of"]: e for e in landed if "shadow_of" in e}
    served = {e["request_id"]: e for e in landed if "shadow_of" not in e}
    assert len(served) == 2 * len(users) + 3 and len(shadows) == 2 * len(users)

    def items(exposure: dict) -> list[str]:
        return [i["item_id"] for i in exposure["items"]]

    for answer in same.values():
        logged = shadows[answer["request_id"]]
        assert (logged["experiment"], logged["variant"], logged["model_version"]) == ("same", "shadow", champion)
        assert logged["request_id"] != answer["request_id"] and logged["user_id"] == answer["user_id"]
        assert items(logged) == [i["item_id"] for i in answer["items"]] == items(served[answer["request_id"]])
    differing = 0
    for answer in other.values():
        logged = shadows[answer["request_id"]]
        assert logged["experiment"] == "popular-only"
        assert {i["source"] for i in logged["items"]} == {"popular"}
        differing += items(logged) != [i["item_id"] for i in answer["items"]]
        assert answer.get("experiment") is None  # a shadow never changes the answer
    assert differing > 0
