"""ModelRegistry.rewrite_files: a registered version's files replaced in place, re-hashed and re-signed
(erasure rewrites the ALS files of every kept version); a version that does not verify is refused."""

from pathlib import Path

import pytest

from recs_pipeline.models.registry import ModelIntegrityError, ModelRegistry, SigningKey, sha256_file

KEY = SigningKey(b"k" * 32, origin="test key")
MANIFEST = {
    "windows": {"train_end": "2024-01-01T00:00:00+00:00"},
    "data_fingerprint": "abc123",
    "feature_service": "ranker_v1",
    "parameters": {},
    "metrics": {"ndcg@20": 0.1},
}


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models", signing_key=KEY)


def register(reg: ModelRegistry) -> str:
    staged = reg.stage()
    (staged / "als").mkdir()
    (staged / "als" / "als_ids.json").write_text('{"user_ids": ["a", "b"]}')
    (staged / "ranker.txt").write_text("model")
    return reg.register(staged, manifest=MANIFEST).version


def test_a_rewritten_version_verifies_with_its_new_hashes_and_says_why(reg, tmp_path):
    version = register(reg)
    reg.promote(version, reason="first")
    new = tmp_path / "ids.json"
    new.write_text('{"user_ids": ["b"]}')
    rewritten = reg.rewrite_files(version, {"als/als_ids.json": new}, reason="erasure of a user")
    assert not new.exists()
    assert (rewritten.path / "als" / "als_ids.json").read_text() == '{"user_ids": ["b"]}'
    verified = reg.verify(version)
    assert verified.files["als/als_ids.json"] == sha256_file(rewritten.path / "als" / "als_ids.json")
    assert list(verified.manifest["rewritten"][0]["files"]) == ["als/als_ids.json"]
    assert reg.champion().version == version  # same name, same place in the history
    # under another key it is refused: the rewrite signed it with the registry's key
    with pytest.raises(ModelIntegrityError):
        ModelRegistry(reg.root, signing_key=SigningKey(b"o" * 32)).verify(version)


def test_a_tampered_version_is_never_signed_again(reg, tmp_path):
    version = register(reg)
    (reg.versions_dir / version / "ranker.txt").write_text("tampered")
    new = tmp_path / "ids.json"
    new.write_text("{}")
    with pytest.raises(ModelIntegrityError, match="ranker.txt"):
        reg.rewrite_files(version, {"als/als_ids.json": new}, reason="erasure")
    with pytest.raises(ValueError, match="no file"):
        (reg.versions_dir / version / "ranker.txt").write_text("model")
        reg.rewrite_files(version, {"nope.bin": new}, reason="erasure")
