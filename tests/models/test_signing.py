"""Signed model manifests: HMAC-SHA256 under the deployment's key, checked by every verification.

The attack they stop: whoever can write the models folder (but cannot read the key) rewrites a model
file and its sha256 in the manifest; the hashes then agree, the signature does not.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recs_pipeline.cli import main
from recs_pipeline.models.registry import (
    DEFAULT_KEY_FILE,
    ManifestSignatureMismatch,
    ModelIntegrityError,
    ModelRegistry,
    ModelVersion,
    SigningKey,
    SigningKeyError,
)

KEY = SigningKey(b"k" * 32, origin="test key")
OTHER_KEY = SigningKey(b"o" * 32, origin="another test key")


@pytest.fixture(autouse=True)
def _no_configured_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECS_MODEL_SIGNING_KEY", raising=False)
    monkeypatch.delenv("RECS_MODEL_SIGNING_KEY_FILE", raising=False)


def _manifest() -> dict[str, Any]:
    return {
        "windows": {"train_end": "2024-01-01T00:00:00+00:00"},
        "data_fingerprint": "abc123",
        "feature_service": "ranker_v1",
        "parameters": {"als": {"factors": 16}},
        "metrics": {"ndcg@20": 0.1, "note": "café"},
    }


def _register(reg: ModelRegistry, payload: bytes = b"ranker-model") -> ModelVersion:
    staged = reg.stage()
    (staged / "ranker.txt").write_bytes(payload)
    (staged / "sub").mkdir()
    (staged / "sub" / "item_snapshot.parquet").write_bytes(b"PAR1-not-really")
    return reg.register(staged, manifest=_manifest())


def _rewrite_manifest(mv: ModelVersion, change: Any) -> None:
    path = mv.path / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2))


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models", signing_key=KEY)


def test_register_signs_and_verify_accepts(reg: ModelRegistry) -> None:
    mv = _register(reg)
    signature = json.loads((mv.path / "manifest.json").read_text())["signature"]
    assert signature == {"algorithm": "hmac-sha256", "key_id": KEY.key_id, "value": signature["value"]}
    assert len(signature["value"]) == 64
    assert reg.verify(mv.version) == mv
    # another process with the same key (another registry object) accepts it too
    assert ModelRegistry(reg.root, signing_key=SigningKey(b"k" * 32)).verify(mv.version) == mv
    reg.promote(mv.version, reason="first")
    assert reg.load_champion() == mv


def test_a_version_signed_with_another_key_is_refused(reg: ModelRegistry) -> None:
    mv = _register(reg)
    other = ModelRegistry(reg.root, signing_key=OTHER_KEY)
    with pytest.raises(ModelIntegrityError, match="signed with another key") as info:
        other.verify(mv.version)
    message = str(info.value)
    assert mv.version in message and KEY.key_id in message and OTHER_KEY.key_id in message
    assert str(reg.root) not in message and "kkkk" not in message  # no path, no key
    with pytest.raises(ModelIntegrityError, match=mv.version):
        other.promote(mv.version, reason="refused")
    assert other.champion() is None


def test_a_rewritten_file_with_a_rewritten_hash_is_refused(reg: ModelRegistry) -> None:
    """The attack: write access to the models folder, no key. The hashes agree with the files again."""
    mv = _register(reg)
    reg.promote(mv.version, reason="first")
    evil = b"a ranker that recommends the attacker's items"
    (mv.path / "ranker.txt").write_bytes(evil)

    def rehash(manifest: dict[str, Any]) -> None:
        manifest["files"]["ranker.txt"] = hashlib.sha256(evil).hexdigest()

    _rewrite_manifest(mv, rehash)
    for call in (lambda: reg.verify(mv.version), reg.load_champion):
        with pytest.raises(ManifestSignatureMismatch, match="does not match") as info:
            call()
        assert mv.version in str(info.value) and str(reg.root) not in str(info.value)
    # the same with the file left alone: the rewritten hash is named as well
    mv2 = _register(reg)
    _rewrite_manifest(mv2, lambda m: m["files"].__setitem__("ranker.txt", "0" * 64))
    with pytest.raises(ManifestSignatureMismatch, match="ranker.txt was modified"):
        reg.verify(mv2.version)


@pytest.mark.parametrize(
    "change",
    [
        lambda m, other: m["metrics"].__setitem__("ndcg@20", 0.99),  # a better score to win the gate
        lambda m, other: m.__setitem__("signature", other["signature"]),  # another version's signature
        lambda m, other: m["signature"].__setitem__("algorithm", "none"),
        lambda m, other: m.__setitem__("signature", "forged"),
    ],
    ids=["metric", "copied_signature", "algorithm", "not_a_mapping"],
)
def test_any_change_to_a_signed_manifest_is_refused(reg: ModelRegistry, change: Any) -> None:
    other, mv = _register(reg), _register(reg)
    other_manifest = json.loads((other.path / "manifest.json").read_text())
    _rewrite_manifest(mv, lambda m: change(m, other_manifest))
    with pytest.raises(ModelIntegrityError, match=mv.version):
        reg.verify(mv.version)
    assert reg.verify(other.version) == other


def test_an_unsigned_version_is_refused_until_signed(reg: ModelRegistry) -> None:
    """A version from a release before signing: refused, with how to sign it; signed, it verifies."""
    mv = _register(reg)
    _rewrite_manifest(mv, lambda m: m.pop("signature"))
    with pytest.raises(ModelIntegrityError, match=f"not signed.*recs sign-models {mv.version}"):
        reg.verify(mv.version)
    signed = reg.sign(mv.version)
    assert reg.verify(mv.version) == signed
    assert reg.sign(mv.version) == signed  # already signed: unchanged
    # a file that disagrees with the manifest is never signed
    unsigned = _register(reg)
    _rewrite_manifest(unsigned, lambda m: m.pop("signature"))
    (unsigned.path / "ranker.txt").write_bytes(b"changed")
    with pytest.raises(ModelIntegrityError, match="ranker.txt was modified"):
        reg.sign(unsigned.version)
    # nor is a manifest changed under this very key (restore it instead)
    changed = _register(reg)
    _rewrite_manifest(changed, lambda m: m["metrics"].__setitem__("ndcg@20", 0.99))
    with pytest.raises(ManifestSignatureMismatch):
        reg.sign(changed.version)


def test_re_signing_after_a_key_change(reg: ModelRegistry) -> None:
    mv = _register(reg)
    rotated = ModelRegistry(reg.root, signing_key=OTHER_KEY)
    rotated.sign(mv.version)
    assert rotated.verify(mv.version).manifest["signature"]["key_id"] == OTHER_KEY.key_id
    with pytest.raises(ModelIntegrityError, match="another key"):
        reg.verify(mv.version)


def test_a_caller_signature_is_replaced_at_registration(reg: ModelRegistry) -> None:
    staged = reg.stage()
    (staged / "ranker.txt").write_text("x")
    mv = reg.register(staged, manifest={**_manifest(), "signature": {"value": "copied"}})
    assert reg.verify(mv.version).manifest["signature"]["value"] != "copied"


def test_default_key_file_is_generated_once_private_and_outside_the_models_folder(tmp_path: Path) -> None:
    root = tmp_path / "home" / "models"
    reg = ModelRegistry(root)
    assert not (tmp_path / "home" / DEFAULT_KEY_FILE).exists()  # nothing until a version needs the key
    mv = _register(reg)
    key_file = tmp_path / "home" / DEFAULT_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert root not in key_file.parents
    content = key_file.read_text()
    assert len(content.strip()) == 64
    # another process (registry object) reads the same key: the version verifies, the file is unchanged
    assert ModelRegistry(root).verify(mv.version) == mv
    assert key_file.read_text() == content
    assert not [p for p in key_file.parent.iterdir() if p != key_file]  # no temp file left


def test_the_key_from_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "models"
    monkeypatch.setenv("RECS_MODEL_SIGNING_KEY", "s" * 40)
    assert ModelRegistry(root).signing_key.key_id == SigningKey(b"s" * 40).key_id
    assert not (tmp_path / DEFAULT_KEY_FILE).exists()

    key_file = tmp_path / "elsewhere" / "key"
    monkeypatch.setenv("RECS_MODEL_SIGNING_KEY_FILE", str(key_file))
    with pytest.raises(SigningKeyError, match="set only one"):
        _ = ModelRegistry(root).signing_key
    monkeypatch.delenv("RECS_MODEL_SIGNING_KEY")
    with pytest.raises(SigningKeyError, match="cannot be read"):  # a configured file is never generated
        _ = ModelRegistry(root).signing_key
    key_file.parent.mkdir()
    key_file.write_text("f" * 40 + "\n")
    assert ModelRegistry(root).signing_key.key_id == SigningKey(b"f" * 40).key_id

    monkeypatch.delenv("RECS_MODEL_SIGNING_KEY_FILE")
    monkeypatch.setenv("RECS_MODEL_SIGNING_KEY", "short-secret")
    with pytest.raises(SigningKeyError, match="too short") as info:
        _ = ModelRegistry(root).signing_key
    assert "short-secret" not in str(info.value)


def test_previous_champions_newest_first(reg: ModelRegistry) -> None:
    a, b, c = (_register(reg) for _ in range(3))
    assert reg.previous_champions() == []
    for mv in (a, b, a, c):
        reg.promote(mv.version, reason="test")
    assert reg.previous_champions() == [a.version, b.version]
    reg.rollback(reason="test")
    assert reg.previous_champions() == [b.version]


def test_recs_sign_models_signs_unsigned_versions(tmp_path: Path) -> None:
    home = tmp_path / "home"
    reg = ModelRegistry(home / "models")
    good, bad = _register(reg), _register(reg)
    for mv in (good, bad):
        _rewrite_manifest(mv, lambda m: m.pop("signature"))
    (bad.path / "ranker.txt").write_bytes(b"changed")
    runner = CliRunner()
    result = runner.invoke(main, ["--home", str(home), "sign-models", "--all"])
    assert result.exit_code == 1, result.output
    assert f"{good.version}: signed" in result.output
    assert f"{bad.version}: not signed" in result.output and "1 of 2" in result.output
    assert reg.verify(good.version) == reg.get(good.version)
    result = runner.invoke(main, ["--home", str(home), "sign-models", good.version])
    assert result.exit_code == 0 and "already signed" in result.output
    assert runner.invoke(main, ["--home", str(home), "sign-models"]).exit_code == 2


# ---------------------------------------------------------------------------- the registry's state


def _rewrite_state(reg: ModelRegistry, change: Any) -> None:
    state = json.loads(reg.registry_path.read_text())
    change(state)
    reg.registry_path.write_text(json.dumps(state, indent=2))


def _roll_back_by_hand(state: dict[str, Any]) -> None:
    """What an attacker who can write the models folder does: an older, genuinely signed version made
    champion, the history kept consistent."""
    older, newer = state["history"][0]["version"], state["champion"]
    state["history"].append({"version": older, "action": "rollback", "from": newer, "at": "t", "reason": "x"})
    state["champion"] = older


def test_promotions_sign_the_registry_state(reg: ModelRegistry) -> None:
    a, b = _register(reg), _register(reg)
    reg.promote(a.version, reason="first")
    reg.promote(b.version, reason="second")
    state = json.loads(reg.registry_path.read_text())
    assert state["signature"]["key_id"] == KEY.key_id
    assert reg.champion() == b and ModelRegistry(reg.root, signing_key=KEY).load_champion() == b
    assert reg.rollback(reason="r") == a  # a rollback through the registry is signed too
    assert ModelRegistry(reg.root, signing_key=KEY).champion() == a


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (_roll_back_by_hand, "does not match its signature"),  # a consistent history, the old signature kept
        (lambda s: (_roll_back_by_hand(s), s.pop("signature")), "is not signed"),  # the same, unsigned
        (lambda s: s["history"][-1].update(reason="edited"), "does not match its signature"),
    ],
    ids=["rolled-back-by-hand", "unsigned", "edited-reason"],
)
def test_a_registry_state_changed_outside_the_pipeline_is_refused(reg: ModelRegistry, change: Any, detail: str) -> None:
    a, b = _register(reg), _register(reg)
    reg.promote(a.version, reason="first")
    reg.promote(b.version, reason="second")
    _rewrite_state(reg, change)
    for call in (reg.champion, reg.load_champion, reg.previous_champions, reg.history):
        with pytest.raises(ModelIntegrityError, match=rf"registry\.json .*{detail}.*sign-models --registry"):
            call()
    with pytest.raises(ModelIntegrityError, match=r"registry\.json"):
        reg.promote(a.version, reason="through a refused state")


def test_a_registry_state_under_another_key_is_refused(reg: ModelRegistry) -> None:
    a = _register(reg)
    reg.promote(a.version, reason="first")
    other = ModelRegistry(reg.root, signing_key=OTHER_KEY)
    with pytest.raises(ModelIntegrityError, match=f"another key .*{OTHER_KEY.key_id}"):
        other.champion()


def test_recs_sign_models_registry_signs_a_trusted_state(tmp_path: Path) -> None:
    home = tmp_path / "home"
    reg = ModelRegistry(home / "models")
    a, b = _register(reg), _register(reg)
    reg.promote(a.version, reason="first")
    reg.promote(b.version, reason="second")
    _rewrite_state(reg, lambda s: s.pop("signature"))  # e.g. written before the state was signed
    with pytest.raises(ModelIntegrityError, match="not signed"):
        reg.champion()
    runner = CliRunner()
    result = runner.invoke(main, ["--home", str(home), "sign-models", "--registry"])
    assert result.exit_code == 0, result.output
    assert "registry.json: signed" in result.output
    assert reg.champion() == b and [e["action"] for e in reg.history()] == ["promote", "promote"]
    again = runner.invoke(main, ["--home", str(home), "sign-models", "--registry"])
    assert again.exit_code == 0 and "already signed" in again.output
