"""Tests of the file-based model registry: registration, promotion, rollback, integrity, the promotion gate."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from recs_pipeline.models import registry as registry_mod
from recs_pipeline.models.registry import (
    ModelIntegrityError,
    ModelRegistry,
    ModelVersion,
    NoChampionError,
    sha256_file,
    should_promote,
)

VERSION_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{10}$")


def _manifest(ndcg: float = 0.1, **extra: Any) -> dict[str, Any]:
    return {
        "windows": {"train_end": "2024-01-01T00:00:00+00:00", "test_end": "2024-01-08T00:00:00+00:00"},
        "data_fingerprint": "abc123",
        "feature_service": "ranker_v1",
        "parameters": {"als": {"factors": 16}, "ranker": {"num_leaves": 15}},
        "metrics": {"ndcg@20": ndcg, "recall@100": 0.3},
        **extra,
    }


def _register(reg: ModelRegistry, ndcg: float = 0.1, *, payload: bytes = b"ranker-model") -> ModelVersion:
    staged = reg.stage()
    (staged / "ranker.txt").write_bytes(payload)
    (staged / "als_ids.json").write_text('{"users": ["u1"], "items": ["i1"]}')
    (staged / "sub").mkdir()
    (staged / "sub" / "item_snapshot.parquet").write_bytes(b"PAR1-not-really")
    return reg.register(staged, manifest=_manifest(ndcg))


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


# ---------------------------------------------------------------------------- registration


def test_register_writes_manifest_with_hashes_and_fields(reg: ModelRegistry) -> None:
    staged = reg.stage()
    assert staged.parent == reg.root and staged.name.startswith(".staging-")
    (staged / "ranker.txt").write_bytes(b"tree\n")
    (staged / "sub").mkdir()
    (staged / "sub" / "f.bin").write_bytes(b"\x00\x01")
    mv = reg.register(staged, manifest=_manifest(0.25))

    assert not staged.exists()
    assert mv.path == reg.root / "versions" / mv.version
    assert VERSION_RE.match(mv.version)
    on_disk = json.loads((mv.path / "manifest.json").read_text())
    assert on_disk["version"] == mv.version
    assert on_disk["files"] == {
        "ranker.txt": hashlib.sha256(b"tree\n").hexdigest(),
        "sub/f.bin": hashlib.sha256(b"\x00\x01").hexdigest(),
    }
    for name, value in _manifest(0.25).items():
        assert on_disk[name] == value
    assert on_disk["created"].endswith("+00:00")
    assert isinstance(on_disk["code_version"], str) and on_disk["code_version"]
    assert mv.metrics == {"ndcg@20": 0.25, "recall@100": 0.3}
    assert mv.feature_service == "ranker_v1"
    assert mv.created == on_disk["created"]
    assert mv.files == on_disk["files"]
    assert (mv.path / "sub" / "f.bin").read_bytes() == b"\x00\x01"
    assert reg.get(mv.version) == mv
    assert sha256_file(mv.path / "ranker.txt") == hashlib.sha256(b"tree\n").hexdigest()


def test_manifest_view_is_read_only(reg: ModelRegistry) -> None:
    mv = _register(reg)
    with pytest.raises(TypeError):
        mv.manifest["metrics"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        mv.manifest["parameters"]["als"]["factors"] = 99  # type: ignore[index]
    copy = mv.metrics
    copy["ndcg@20"] = 1.0
    assert mv.metrics["ndcg@20"] == 0.1


def test_code_version_is_git_hash_or_unknown(monkeypatch: pytest.MonkeyPatch, reg: ModelRegistry) -> None:
    code = _register(reg).manifest["code_version"]
    assert code == "unknown" or re.fullmatch(r"[0-9a-f]{40}", code)

    def boom(*args: Any, **kwargs: Any) -> None:
        raise FileNotFoundError("git")

    registry_mod._code_version.cache_clear()
    monkeypatch.setattr(registry_mod.subprocess, "run", boom)
    try:
        assert _register(reg).manifest["code_version"] == "unknown"
    finally:
        registry_mod._code_version.cache_clear()


def test_register_validates_manifest(reg: ModelRegistry) -> None:
    staged = reg.stage()
    (staged / "ranker.txt").write_text("x")
    bad = _manifest()
    del bad["windows"], bad["metrics"]
    with pytest.raises(ValueError, match="windows, metrics"):
        reg.register(staged, manifest=bad)
    with pytest.raises(ValueError, match="metrics must be dict"):
        reg.register(staged, manifest=_manifest() | {"metrics": [0.1]})
    with pytest.raises(ValueError, match="JSON"):
        reg.register(staged, manifest=_manifest() | {"parameters": {"obj": object()}})
    with pytest.raises(ValueError, match="JSON"):
        reg.register(staged, manifest=_manifest(float("nan")))
    with pytest.raises(ValueError, match="version"):
        reg.register(staged, manifest=_manifest(version="mine"))
    assert staged.exists() and reg.versions() == []


def test_register_rejects_foreign_empty_or_manifest_folders(reg: ModelRegistry, tmp_path: Path) -> None:
    foreign = tmp_path / "elsewhere"
    foreign.mkdir()
    (foreign / "ranker.txt").write_text("x")
    with pytest.raises(ValueError, match="stage"):
        reg.register(foreign, manifest=_manifest())
    with pytest.raises(ValueError, match="no files"):
        reg.register(reg.stage(), manifest=_manifest())
    staged = reg.stage()
    (staged / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="manifest.json"):
        reg.register(staged, manifest=_manifest())
    assert reg.versions() == []


def test_staging_folders_are_invisible(reg: ModelRegistry) -> None:
    staged = reg.stage()
    (staged / "ranker.txt").write_text("half written")
    assert reg.versions() == []
    mv = _register(reg)
    assert [v.version for v in reg.versions()] == [mv.version]
    assert staged.exists()
    with pytest.raises(KeyError):
        reg.get(staged.name)


def test_versions_unique_and_sortable(reg: ModelRegistry) -> None:
    made = [_register(reg, ndcg=i / 100).version for i in range(8)]
    assert len(set(made)) == 8
    assert made == sorted(made)
    assert [v.version for v in reg.versions()] == made
    assert all(VERSION_RE.match(v) for v in made)


def test_versions_unique_within_the_same_instant(reg: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    monkeypatch.setattr(registry_mod, "_utcnow", lambda: frozen)
    suffixes = iter(["aaaa", "aaaa", "bbbb", "cccc"])  # the second draw collides and must be redrawn
    monkeypatch.setattr(registry_mod.secrets, "token_hex", lambda n: next(suffixes))
    made = [_register(reg).version for _ in range(3)]
    assert made == ["20250102T030405Z-678901aaaa", "20250102T030405Z-678901bbbb", "20250102T030405Z-678901cccc"]
    assert [v.version for v in reg.versions()] == made
    assert all(reg.verify(v) for v in made)
    assert not [p for p in reg.root.iterdir() if p.name.startswith(".staging-")]


def test_get_unknown_lists_known_versions(reg: ModelRegistry) -> None:
    mv = _register(reg)
    with pytest.raises(KeyError, match=mv.version):
        reg.get("20000101T000000Z-0000000000")
    with pytest.raises(KeyError):
        reg.get("../models")


# ---------------------------------------------------------------------------- champion / challengers / rollback


def test_promote_champion_and_challengers(reg: ModelRegistry) -> None:
    assert reg.champion() is None
    a, b, c = (_register(reg, ndcg=x) for x in (0.1, 0.2, 0.3))
    assert [v.version for v in reg.challengers()] == [a.version, b.version, c.version]

    assert reg.promote(b.version, reason="beats baselines") == b
    assert reg.champion() == b
    assert [v.version for v in reg.challengers()] == [c.version]  # a is older than the champion
    d = _register(reg, ndcg=0.4)
    assert [v.version for v in reg.challengers()] == [c.version, d.version]

    reg.promote(d.version, reason="better")
    assert reg.champion() == d
    assert reg.challengers() == []
    assert reg.load_champion() == d

    history = reg.history()
    assert [(e["version"], e["action"], e["reason"]) for e in history] == [
        (b.version, "promote", "beats baselines"),
        (d.version, "promote", "better"),
    ]
    assert all(e["at"].endswith("+00:00") for e in history)
    reg.promote(d.version, reason="again")  # already champion: no-op
    assert len(reg.history()) == 2


def test_promote_unknown_version_raises(reg: ModelRegistry) -> None:
    with pytest.raises(KeyError):
        reg.promote("nope", reason="x")
    assert not reg.registry_path.exists()


def test_rollback_pops_promotions(reg: ModelRegistry) -> None:
    a, b, c = (_register(reg, ndcg=x) for x in (0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="no previous champion"):
        reg.rollback(reason="nothing promoted")
    for mv in (a, b, c):
        reg.promote(mv.version, reason="up")

    assert reg.rollback(reason="c regressed online") == b
    assert reg.champion() == b
    assert reg.rollback(reason="b too") == a
    assert reg.champion() == a
    with pytest.raises(ValueError, match="no previous champion"):
        reg.rollback(reason="too far")
    assert reg.champion() == a

    last = reg.history()[-1]
    assert (last["action"], last["version"], last["from"], last["reason"]) == (
        "rollback",
        a.version,
        b.version,
        "b too",
    )
    # Re-promoting then rolling back returns to the champion before it.
    reg.promote(c.version, reason="fixed")
    assert reg.rollback(reason="no") == a


def test_rollback_skips_repeated_promotion(reg: ModelRegistry) -> None:
    a, b = _register(reg), _register(reg)
    reg.promote(a.version, reason="1")
    reg.promote(b.version, reason="2")
    reg.promote(a.version, reason="3")
    assert reg.rollback(reason="r") == b  # the previous distinct champion


def test_registry_survives_reopen(reg: ModelRegistry) -> None:
    a, b = _register(reg), _register(reg)
    reg.promote(a.version, reason="first")
    reg.promote(b.version, reason="second")
    reopened = ModelRegistry(reg.root)
    assert reopened.champion() == b
    assert reopened.history() == reg.history()
    assert reopened.rollback(reason="r") == a
    assert ModelRegistry(reg.root).champion() == a
    state = json.loads(reg.registry_path.read_text())
    assert state["champion"] == a.version
    assert [e["action"] for e in state["history"]] == ["promote", "promote", "rollback"]
    assert not [p for p in reg.root.iterdir() if ".tmp-" in p.name]


def test_load_champion_without_champion(reg: ModelRegistry) -> None:
    _register(reg)
    with pytest.raises(NoChampionError, match="no champion"):
        reg.load_champion()


def test_corrupt_registry_json_raises(reg: ModelRegistry) -> None:
    a = _register(reg)
    reg.promote(a.version, reason="x")
    reg.registry_path.write_text("{not json")
    with pytest.raises(ModelIntegrityError, match="registry.json"):
        reg.champion()
    reg.registry_path.write_text(
        json.dumps(
            {"champion": "other", "history": [{"version": a.version, "action": "promote", "at": "t", "reason": "x"}]}
        )
    )
    with pytest.raises(ModelIntegrityError, match="does not match"):
        reg.champion()


# ---------------------------------------------------------------------------- integrity


def _tamper_modify(mv: ModelVersion) -> str:
    path = mv.path / "ranker.txt"
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    return "ranker.txt"


def _tamper_delete(mv: ModelVersion) -> str:
    (mv.path / "sub" / "item_snapshot.parquet").unlink()
    return "sub/item_snapshot.parquet"


def _tamper_extra(mv: ModelVersion) -> str:
    (mv.path / "sub" / "extra.bin").write_bytes(b"x")
    return "sub/extra.bin"


def _tamper_manifest(mv: ModelVersion) -> str:
    (mv.path / "manifest.json").write_text('{"version": ')
    return "manifest.json"


def _tamper_manifest_deleted(mv: ModelVersion) -> str:
    (mv.path / "manifest.json").unlink()
    return "manifest.json"


def _tamper_manifest_hash(mv: ModelVersion) -> str:
    manifest = json.loads((mv.path / "manifest.json").read_text())
    manifest["files"]["als_ids.json"] = "0" * 64
    (mv.path / "manifest.json").write_text(json.dumps(manifest))
    return "als_ids.json"


TAMPERS = [
    _tamper_modify,
    _tamper_delete,
    _tamper_extra,
    _tamper_manifest,
    _tamper_manifest_deleted,
    _tamper_manifest_hash,
]


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda f: f.__name__)
def test_tampering_is_detected(reg: ModelRegistry, tamper: Any) -> None:
    old, mv = _register(reg), _register(reg, payload=b"the real model")
    assert reg.verify(mv.version) == mv
    reg.promote(old.version, reason="first")
    reg.promote(mv.version, reason="second")
    assert reg.load_champion() == mv

    name = tamper(mv)
    for call in (
        lambda: reg.verify(mv.version),
        lambda: reg.load_champion(),
        lambda: ModelRegistry(reg.root).promote(mv.version, reason="again"),
    ):
        with pytest.raises(ModelIntegrityError) as info:
            call()
        assert mv.version in str(info.value)
        assert name in str(info.value)
    assert reg.verify(old.version) == old


@pytest.mark.parametrize("tamper", [_tamper_modify, _tamper_extra], ids=lambda f: f.__name__)
def test_promote_and_rollback_refuse_tampered_version(reg: ModelRegistry, tamper: Any) -> None:
    a, b = _register(reg), _register(reg)
    reg.promote(a.version, reason="1")
    reg.promote(b.version, reason="2")
    tamper(a)
    with pytest.raises(ModelIntegrityError, match=a.version):
        reg.rollback(reason="r")
    assert reg.champion() == b
    c = _register(reg)
    tamper(c)
    with pytest.raises(ModelIntegrityError, match=c.version):
        reg.promote(c.version, reason="3")
    assert reg.champion() == b
    assert len(reg.history()) == 2


# ---------------------------------------------------------------------------- promotion gate

BASELINES = {"popularity": {"ndcg@20": 0.05}, "item_knn": {"ndcg@20": 0.08}}


def test_gate_beats_all() -> None:
    ok, msg = should_promote({"ndcg@20": 0.12}, champion_metrics={"ndcg@20": 0.11}, baseline_metrics=BASELINES)
    assert ok is True
    assert (
        msg == "challenger ndcg@20 0.1200 beats champion 0.1100, baseline popularity 0.0500, baseline item_knn 0.0800"
    )


@pytest.mark.parametrize(
    ("champion", "baselines", "loser"),
    [
        ({"ndcg@20": 0.12}, BASELINES, "champion 0.1200"),
        (None, {**BASELINES, "popularity": {"ndcg@20": 0.12}}, "baseline popularity 0.1200"),
    ],
)
def test_gate_ties_fail(champion: dict | None, baselines: dict, loser: str) -> None:
    ok, msg = should_promote({"ndcg@20": 0.12}, champion_metrics=champion, baseline_metrics=baselines)
    assert ok is False
    assert f"does not beat {loser}" in msg


def test_gate_loses_to_one_baseline() -> None:
    ok, msg = should_promote({"ndcg@20": 0.07}, champion_metrics={"ndcg@20": 0.06}, baseline_metrics=BASELINES)
    assert ok is False
    assert "does not beat baseline item_knn 0.0800" in msg
    assert "popularity" not in msg.split("(beats")[0]
    assert "beats champion 0.0600, baseline popularity 0.0500" in msg


def test_gate_without_champion_uses_baselines_only() -> None:
    ok, msg = should_promote({"ndcg@20": 0.09}, champion_metrics=None, baseline_metrics=BASELINES)
    assert ok is True
    assert "champion 0" not in msg and "no champion" in msg
    ok, _ = should_promote({"ndcg@20": 0.06}, champion_metrics=None, baseline_metrics=BASELINES)
    assert ok is False


def test_gate_other_metric() -> None:
    ok, msg = should_promote(
        {"recall@100": 0.5, "ndcg@20": 0.0},
        champion_metrics={"recall@100": 0.4},
        baseline_metrics={"pop": {"recall@100": 0.3}},
        metric="recall@100",
    )
    assert ok is True and "recall@100 0.5000" in msg


@pytest.mark.parametrize(
    ("challenger", "champion", "baselines", "match"),
    [
        ({"recall": 0.1}, None, BASELINES, "challenger"),
        ({"ndcg@20": 0.1}, {"recall": 0.1}, BASELINES, "champion"),
        ({"ndcg@20": 0.1}, None, {"popularity": {"ndcg@20": 0.05}, "knn": {}}, "knn"),
        ({"ndcg@20": float("nan")}, None, BASELINES, "finite"),
        ({"ndcg@20": 0.1}, None, {}, "baseline"),
    ],
)
def test_gate_invalid_inputs_raise(challenger: dict, champion: dict | None, baselines: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        should_promote(challenger, champion_metrics=champion, baseline_metrics=baselines)
