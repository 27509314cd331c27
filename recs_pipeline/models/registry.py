"""File-based model registry: versioned folders with manifests, champion/challenger, gated promotion.

Layout under the registry root (e.g. ``$RECS_HOME/models``)::

    models/
      registry.json                  # champion + promotion history
      versions/<version>/manifest.json
      versions/<version>/<files...>  # e.g. als_factors.npz, als_ids.json, ranker.txt
      .staging-<uuid>/               # work in progress, never listed as a version

Guarantees:

* **No half-written version is visible.** Model files are written into a staging folder from
  :meth:`ModelRegistry.stage`; :meth:`ModelRegistry.register` hashes them, writes ``manifest.json``
  and renames the whole folder into ``versions/`` with one ``os.replace``.
* **Signed manifests.** :meth:`ModelRegistry.register` signs the manifest (which holds every file's
  sha256) with HMAC-SHA256 under the deployment's key (:class:`SigningKey`: ``RECS_MODEL_SIGNING_KEY``,
  ``RECS_MODEL_SIGNING_KEY_FILE``, else a key file beside the registry, ``<root>/../secrets/
  model_signing.key``, generated with mode 0600 on first use). Whoever can write the models folder but
  not read the key cannot rewrite a file and its hash: the signature no longer matches.
* **Verified loading.** :meth:`ModelRegistry.verify` checks the manifest's signature, then recomputes
  the sha256 of every file and compares it with the manifest; an unsigned or wrongly signed manifest,
  a missing, extra, modified file or an unreadable manifest raises :class:`ModelIntegrityError` naming
  the version and the file. :meth:`ModelRegistry.promote`, :meth:`ModelRegistry.rollback` and
  :meth:`ModelRegistry.load_champion` always verify first. :meth:`ModelRegistry.sign` (``recs
  sign-models``) signs a version registered before signing existed, or under another key.
* **Sortable, unique versions.** ``YYYYMMDDTHHMMSSZ-<microseconds:06d><4 random hex>``, e.g.
  ``20250101T120000Z-0421378f3a``: lexical order is registration order (to the microsecond) and the
  random part keeps two registrations in the same microsecond apart.
* **Atomic, signed registry state.** ``registry.json`` is written to a temporary file and renamed over
  the old one, under an advisory file lock (POSIX) so concurrent promotions do not lose updates. It is
  signed with the same key (another domain prefix than manifests), and every read checks it, so whoever
  can write the folder cannot choose the champion; :meth:`ModelRegistry.sign_state` (``recs sign-models
  --registry``) signs a state written before that.

Champion semantics: the history is a stack of promotions. ``promote`` pushes a version (promoting
the current champion again is a no-op and records nothing); ``rollback`` pops the current champion
so the previous distinct champion takes over. Promoting A, B, C then rolling back twice leaves A as
champion; a third rollback raises :class:`ValueError`. The champion is recomputed from the history
on every read and must match the ``champion`` field stored next to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

try:  # POSIX only; the registry still works (without the cross-process lock) elsewhere.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
REGISTRY_NAME = "registry.json"
STAGING_PREFIX = ".staging-"
REQUIRED_FIELDS: dict[str, type] = {
    "windows": dict,
    "data_fingerprint": str,
    "feature_service": str,
    "parameters": dict,
    "metrics": dict,
}
GENERATED_FIELDS = ("version", "created", "files", "code_version")
SIGNATURE_FIELD = "signature"  # written by register() and sign(); a caller's value is replaced
SIGNATURE_ALGORITHM = "hmac-sha256"
# Where the generated key lives when none is configured, relative to the registry root's parent (the
# pipeline's home): outside the models folder, so write access to that folder alone cannot replace it.
DEFAULT_KEY_FILE = Path("secrets") / "model_signing.key"
MIN_KEY_LENGTH = 32
_SIGNED_PREFIX = b"recs-model-manifest-v1\n"
_REGISTRY_SIGNED_PREFIX = b"recs-model-registry-v1\n"  # a manifest's signature never verifies a registry state
_KEY_ID_MESSAGE = b"recs-model-signing-key-id"
_VERSION_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{10}$")
_CHUNK = 1 << 20


class ModelIntegrityError(Exception):
    """A model version (or the registry state) on disk does not match what was recorded.

    Raised for a tampered, missing or extra file, an unreadable manifest or ``registry.json``, or a
    sha256 mismatch. The message names the version and the file and says what to do.
    """


class ManifestSignatureMismatch(ModelIntegrityError):
    """A signed manifest was changed after it was signed (or signed by someone holding another key
    who wrote this key's id into it)."""


class SigningKeyError(ValueError):
    """The model signing key is not usable (too short, a configured key file missing or unreadable).

    The message names the setting (``RECS_MODEL_SIGNING_KEY`` / ``RECS_MODEL_SIGNING_KEY_FILE``) and
    says how to fix it; it never contains the key.
    """


class NoChampionError(LookupError):
    """The registry has no champion yet (nothing was ever promoted, or everything was rolled back)."""


def sha256_file(path: Path) -> str:
    """Return the hex sha256 digest of a file, read in 1 MiB chunks.

    Parameters
    ----------
    path : Path
        File to hash.

    Returns
    -------
    str
        64 lowercase hex characters.
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _freeze(value: Any) -> Any:
    """Deep read-only view of parsed JSON: dicts become mapping proxies, lists become tuples."""
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """Plain (mutable) copy of a value made by :func:`_freeze`."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version.

    Attributes
    ----------
    version : str
        Version id (the folder name under ``versions/``).
    path : Path
        Folder holding ``manifest.json`` and the model files.
    manifest : Mapping[str, Any]
        Deep read-only view of ``manifest.json`` (nested dicts are mapping proxies, lists tuples).
    """

    version: str
    path: Path
    manifest: Mapping[str, Any] = field(compare=False, repr=False)

    def section(self, key: str) -> Any:
        """A plain (mutable) copy of one manifest entry, or None when the manifest has none."""
        return _thaw(self.manifest[key]) if key in self.manifest else None

    @property
    def metrics(self) -> dict[str, Any]:
        """Offline evaluation metrics recorded at registration (a copy)."""
        return _thaw(self.manifest["metrics"])

    @property
    def created(self) -> str:
        """Registration time, ISO 8601 UTC."""
        return str(self.manifest["created"])

    @property
    def feature_service(self) -> str:
        """Name of the Feast feature service the model was trained against."""
        return str(self.manifest["feature_service"])

    @property
    def files(self) -> dict[str, str]:
        """Relative posix path -> sha256 of every model file (a copy)."""
        return dict(self.manifest["files"])


@lru_cache(maxsize=1)
def _code_version() -> str:
    """Git commit of the checkout holding this package, or ``"unknown"``; never raises."""
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        out = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [git, "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError, ValueError):
        return "unknown"
    return out if re.fullmatch(r"[0-9a-f]{40,64}", out) else "unknown"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_version(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{now.microsecond:06d}{secrets.token_hex(2)}"


def _scan_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Regular files under ``folder`` by relative posix path, and the relative paths of symlinks."""
    files: dict[str, Path] = {}
    links: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        for name in [*dirnames, *filenames]:
            full = base / name
            rel = full.relative_to(folder).as_posix()
            if full.is_symlink():
                links.append(rel)
            elif name in filenames:
                files[rel] = full
    return dict(sorted(files.items())), sorted(links)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON to a temp file next to ``path``, fsync, then ``os.replace`` it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _validate_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    missing = [name for name in REQUIRED_FIELDS if name not in manifest]
    if missing:
        raise ValueError(f"manifest is missing required field(s): {', '.join(missing)}")
    wrong = [
        f"{name} must be {kind.__name__}, got {type(manifest[name]).__name__}"
        for name, kind in REQUIRED_FIELDS.items()
        if not isinstance(manifest[name], kind)
    ]
    if wrong:
        raise ValueError(f"manifest has field(s) of the wrong type: {'; '.join(wrong)}")
    reserved = [name for name in GENERATED_FIELDS if name in manifest]
    if reserved:
        raise ValueError(f"manifest field(s) {', '.join(reserved)} are generated by the registry; do not pass them")
    payload = dict(manifest)
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"manifest is not JSON-serialisable (no NaN/inf, only JSON types): {exc}") from exc
    return payload


def _signed_bytes(manifest: Mapping[str, Any], prefix: bytes = _SIGNED_PREFIX) -> bytes:
    """The bytes a signature covers: every field but the signature, as canonical JSON, after ``prefix``
    (what is signed: a version's manifest, or the registry's state)."""
    body = {k: v for k, v in manifest.items() if k != SIGNATURE_FIELD}
    text = json.dumps(_thaw(body), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return prefix + text.encode("ascii")


@dataclass(frozen=True)
class SigningKey:
    """The secret that signs and verifies model manifests (HMAC-SHA256).

    Build it with :meth:`for_registry` (from the settings) or :meth:`from_file`; tests may pass bytes.

    Attributes
    ----------
    secret : bytes
        At least ``MIN_KEY_LENGTH`` bytes; never shown in a repr or a message.
    origin : str
        Where it came from (a setting's name or a file), for operators' messages and logs.
    """

    secret: bytes = field(repr=False)
    origin: str = "a key passed in"

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_LENGTH:
            raise SigningKeyError(
                f"the model signing key from {self.origin} is too short ({len(self.secret)} bytes, at least "
                f"{MIN_KEY_LENGTH}); generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`"
            )

    @property
    def key_id(self) -> str:
        """16 hex characters that tell keys apart without revealing them (an HMAC of a fixed text)."""
        return hmac.new(self.secret, _KEY_ID_MESSAGE, hashlib.sha256).hexdigest()[:16]

    def sign(self, manifest: Mapping[str, Any], *, prefix: bytes = _SIGNED_PREFIX) -> dict[str, str]:
        """The ``signature`` entry of ``manifest`` (its other fields, canonical JSON, HMAC-SHA256)."""
        value = hmac.new(self.secret, _signed_bytes(manifest, prefix), hashlib.sha256).hexdigest()
        return {"algorithm": SIGNATURE_ALGORITHM, "key_id": self.key_id, "value": value}

    def signature_problem(self, payload: Mapping[str, Any], *, prefix: bytes = _SIGNED_PREFIX) -> str | None:
        """What is wrong with ``payload``'s signature under this key: ``"unsigned"``, ``"malformed"``,
        ``"other key <id>"``, ``"mismatch"``, or None when it verifies."""
        signature = payload.get(SIGNATURE_FIELD)
        if signature is None:
            return "unsigned"
        if (
            not isinstance(signature, Mapping)
            or signature.get("algorithm") != SIGNATURE_ALGORITHM
            or not isinstance(signature.get("value"), str)
            or not isinstance(signature.get("key_id"), str)
        ):
            return "malformed"
        if signature["key_id"] != self.key_id:
            return f"other key {signature['key_id']}"
        if not hmac.compare_digest(self.sign(payload, prefix=prefix)["value"], signature["value"]):
            return "mismatch"
        return None

    def check(self, version: str, manifest: Mapping[str, Any]) -> None:
        """Raise :class:`ModelIntegrityError` unless ``manifest`` carries a valid signature under this key.

        The messages name the version, never a path or the key.
        """
        problem = self.signature_problem(manifest)
        if problem is None:
            return
        if problem == "unsigned":
            raise ModelIntegrityError(
                f"model version {version} is not signed (registered before model signing, or its signature was "
                f"removed); it is not served. If you trust its files, sign it with `recs sign-models {version}`; "
                "otherwise re-register the model (`recs run`)"
            )
        if problem == "malformed":
            raise ModelIntegrityError(
                f"model version {version}: its manifest's signature is malformed (expected {SIGNATURE_ALGORITHM} "
                "with key_id and value); the manifest was altered: restore the version from backup or re-register "
                "the model; do not serve it"
            )
        if problem.startswith("other key"):
            raise ModelIntegrityError(
                f"model version {version} was signed with another key (key id {problem.removeprefix('other key ')}; "
                f"the configured key's id is {self.key_id}): configure the key it was signed with "
                f"(RECS_MODEL_SIGNING_KEY or RECS_MODEL_SIGNING_KEY_FILE), or, only if you trust its files, re-sign "
                f"it with `recs sign-models {version}`"
            )
        if problem == "mismatch":
            raise ManifestSignatureMismatch(
                f"model version {version}: the signature of its {MANIFEST_NAME} does not match the manifest's "
                "content: the manifest was changed after the version was registered (e.g. a file and its hash "
                "rewritten); restore the version from backup or re-register the model; do not serve it"
            )

    @classmethod
    def from_file(cls, path: Path, *, create: bool = False) -> SigningKey:
        """The key in ``path`` (its text, surrounding whitespace ignored).

        Parameters
        ----------
        path : Path
            Key file.
        create : bool
            Generate the file (64 random hex characters, mode 0600, its folder 0700) when it does
            not exist. Two processes creating it at once end up with the same key.

        Raises
        ------
        SigningKeyError
            The file is missing (and ``create`` is false), unreadable or holds too short a key.
        """
        path = Path(path)
        if create and not path.exists():
            _create_key_file(path)
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise SigningKeyError(
                f"the model signing key file {path} cannot be read ({exc.strerror or exc}); create it (e.g. `python "
                f"-c 'import secrets; print(secrets.token_hex(32))' > {path}; chmod 600 {path}`) or point "
                "RECS_MODEL_SIGNING_KEY_FILE at the deployment's key"
            ) from None
        with contextlib.suppress(OSError):
            if path.stat().st_mode & 0o077:
                logger.warning("model signing key file %s is accessible to other users; chmod 600 it", path)
        return cls(secret, origin=str(path))

    @classmethod
    def for_registry(cls, root: Path) -> SigningKey:
        """The deployment's key for the registry at ``root``, from the settings.

        ``RECS_MODEL_SIGNING_KEY`` (the key itself), else ``RECS_MODEL_SIGNING_KEY_FILE``, else the
        file ``<root>/../secrets/model_signing.key`` (``DEFAULT_KEY_FILE`` beside the registry, in the
        pipeline's home), generated on first use.
        """
        from recs_pipeline.settings import SigningSettings

        settings = SigningSettings.from_env()
        if settings.signing_key is not None and settings.signing_key_file is not None:
            raise SigningKeyError(
                "both RECS_MODEL_SIGNING_KEY and RECS_MODEL_SIGNING_KEY_FILE are set: set only one (the key, or the "
                "file holding it)"
            )
        if settings.signing_key is not None:
            return cls(settings.signing_key.get_secret_value().encode("utf-8"), origin="RECS_MODEL_SIGNING_KEY")
        if settings.signing_key_file is not None:
            return cls.from_file(settings.signing_key_file)
        return cls.from_file(Path(root).parent / DEFAULT_KEY_FILE, create=True)


def _create_key_file(path: Path) -> None:
    """Write a fresh random key to ``path`` (0600) unless another process wrote one first."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_bytes(32).hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces a key another process created meanwhile
        except FileExistsError:
            return
        _fsync_dir(path.parent)
        logger.warning("generated a model signing key at %s (mode 0600); back it up with the models", path)
    finally:
        tmp.unlink(missing_ok=True)


class ModelRegistry:
    """A model registry in one folder; see the module docstring for layout and semantics.

    Parameters
    ----------
    root : Path
        Registry folder; created (with ``versions/``) if absent.
    signing_key : SigningKey, optional
        The key that signs and verifies manifests; default :meth:`SigningKey.for_registry`, resolved
        (and the default key file generated) the first time a version is registered, verified or signed.
    """

    def __init__(self, root: Path, *, signing_key: SigningKey | None = None) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self.registry_path = self.root / REGISTRY_NAME
        self._signing_key = signing_key

    @property
    def signing_key(self) -> SigningKey:
        """The key manifests are signed and verified with (read once per registry object).

        Raises
        ------
        SigningKeyError
            The configured key is unusable.
        """
        if self._signing_key is None:
            self._signing_key = SigningKey.for_registry(self.root)
        return self._signing_key

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    # ------------------------------------------------------------------ staging and registration

    def stage(self) -> Path:
        """Create a fresh hidden staging folder inside the root for the caller to write model files into.

        Returns
        -------
        Path
            ``<root>/.staging-<uuid>``; pass it to :meth:`register`. Abandoned staging folders are
            never listed as versions and can be deleted at any time.
        """
        staged = self.root / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        staged.mkdir()
        return staged

    def register(self, staged: Path, *, manifest: Mapping[str, Any]) -> ModelVersion:
        """Hash the staged files, write ``manifest.json`` and atomically publish the folder as a new version.

        Parameters
        ----------
        staged : Path
            Folder from :meth:`stage`, holding the model files (subfolders allowed, no symlinks,
            no ``manifest.json``). It is moved, so it no longer exists afterwards.
        manifest : Mapping[str, Any]
            Caller fields; must include ``windows`` (dict), ``data_fingerprint`` (str),
            ``feature_service`` (str), ``parameters`` (dict) and ``metrics`` (dict), and be
            JSON-serialisable. ``version``, ``created``, ``files`` and ``code_version`` are added, and
            the ``signature`` (of the whole manifest, under :attr:`signing_key`; a ``signature`` passed
            in, e.g. copied from another version's manifest, is replaced).

        Returns
        -------
        ModelVersion
            The registered version (not promoted).

        Raises
        ------
        ValueError
            Missing/mistyped/reserved fields, non-JSON values, a folder not made by :meth:`stage`,
            no files, a symlink or a ``manifest.json`` among the staged files.
        SigningKeyError
            The signing key is unusable (nothing is registered).
        """
        payload = _validate_manifest(manifest)
        payload.pop(SIGNATURE_FIELD, None)
        key = self.signing_key
        staged = Path(staged)
        if (
            not staged.is_dir()
            or staged.is_symlink()
            or not staged.name.startswith(STAGING_PREFIX)
            or staged.resolve().parent != self.root.resolve()
        ):
            raise ValueError(f"{staged} is not a staging folder of {self.root}; create one with stage()")
        files, links = _scan_files(staged)
        if links:
            raise ValueError(f"staged folder {staged} contains symlinks (not allowed): {', '.join(links)}")
        if MANIFEST_NAME in files:
            raise ValueError(f"staged folder {staged} must not contain {MANIFEST_NAME}; the registry writes it")
        if not files:
            raise ValueError(f"staged folder {staged} holds no files; write the model files before register()")
        payload["files"] = {rel: sha256_file(full) for rel, full in files.items()}
        payload["code_version"] = _code_version()
        for _attempt in range(10):
            now = _utcnow()
            version = _new_version(now)
            payload["version"] = version
            payload["created"] = now.isoformat()
            payload[SIGNATURE_FIELD] = key.sign(payload)
            _write_json_atomic(staged / MANIFEST_NAME, payload)
            target = self.versions_dir / version
            if target.exists():
                continue
            try:
                os.replace(staged, target)
            except OSError as exc:  # lost a race for the same name (ENOTEMPTY/EEXIST): draw again
                if target.exists():
                    continue
                raise ValueError(f"could not move {staged} to {target}: {exc}") from exc
            break
        else:  # pragma: no cover - needs 10 collisions in a row
            raise RuntimeError("could not allocate a unique model version name")
        _fsync_dir(self.versions_dir)
        logger.info("registered model version %s (%d files)", version, len(files))
        return ModelVersion(version=version, path=target, manifest=_freeze(payload))

    # ------------------------------------------------------------------ lookup

    def _read_manifest(self, version: str, folder: Path) -> dict[str, Any]:
        path = folder / MANIFEST_NAME
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelIntegrityError(
                f"model version {version}: {MANIFEST_NAME} is missing at {path}; the folder is not a valid "
                f"version - restore it from backup or delete the folder"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelIntegrityError(
                f"model version {version}: {MANIFEST_NAME} is unreadable ({exc}); restore it from backup "
                f"or delete the folder {folder}"
            ) from exc
        problems = []
        if not isinstance(manifest, dict):
            problems.append("it is not a JSON object")
        else:
            if manifest.get("version") != version:
                problems.append(f"its version {manifest.get('version')!r} does not match the folder name")
            files = manifest.get("files")
            if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
                problems.append("'files' is not a mapping of path -> sha256")
            missing = [name for name in (*REQUIRED_FIELDS, "created") if name not in manifest]
            if missing:
                problems.append(f"missing field(s) {', '.join(missing)}")
        if problems:
            raise ModelIntegrityError(
                f"model version {version}: {MANIFEST_NAME} is corrupt ({'; '.join(problems)}); restore it from "
                f"backup or delete the folder {folder}"
            )
        return manifest

    def _version_names(self) -> list[str]:
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self) -> list[ModelVersion]:
        """All registered versions, oldest first (staging folders are never listed).

        Raises
        ------
        ModelIntegrityError
            A version folder has a missing or corrupt manifest.
        """
        return [self.get(name) for name in self._version_names()]

    def get(self, version: str) -> ModelVersion:
        """Return one version (manifest read, files not verified; use :meth:`verify` for that).

        Raises
        ------
        KeyError
            No such version; the message lists the known versions.
        ModelIntegrityError
            Its manifest is missing or corrupt.
        """
        folder = self.versions_dir / version
        valid_name = isinstance(version, str) and version and "/" not in version and "\\" not in version
        if not valid_name or version.startswith(".") or not folder.is_dir():
            known = self._version_names()
            raise KeyError(
                f"unknown model version {version!r} in {self.root}; known versions: {', '.join(known) or '(none)'}"
            )
        manifest = self._read_manifest(version, folder)
        return ModelVersion(version=version, path=folder, manifest=_freeze(manifest))

    def verify(self, version: str) -> ModelVersion:
        """Check the manifest's signature, then recompute every file's sha256 and compare it with the manifest.

        Returns
        -------
        ModelVersion
            The verified version.

        Raises
        ------
        KeyError
            No such version.
        ModelIntegrityError
            Missing or corrupt manifest; a manifest that is unsigned, signed with another key or changed
            since it was signed; or a missing, extra (unlisted), symlinked or modified file.
        SigningKeyError
            The signing key is unusable.
        """
        mv = self.get(version)
        try:
            self.signing_key.check(version, mv.manifest)
        except ManifestSignatureMismatch as exc:
            try:  # say which hashes were changed too, when the files on disk tell
                self._check_files(mv)
            except ModelIntegrityError as files:
                detail = str(files).removeprefix(f"model version {version}: ")
                raise ManifestSignatureMismatch(f"{exc}; besides, {detail}") from None
            raise
        self._check_files(mv)
        return mv

    def _check_files(self, mv: ModelVersion) -> None:
        version = mv.version
        expected = mv.files
        actual, links = _scan_files(mv.path)
        actual.pop(MANIFEST_NAME, None)
        advice = f"re-register the model or restore {mv.path} from backup; do not serve this version"
        if links:
            raise ModelIntegrityError(f"model version {version}: unexpected symlink(s) {', '.join(links)}; {advice}")
        missing = sorted(set(expected) - set(actual))
        if missing:
            raise ModelIntegrityError(
                f"model version {version}: file(s) listed in the manifest are missing: {', '.join(missing)}; {advice}"
            )
        extra = sorted(set(actual) - set(expected))
        if extra:
            raise ModelIntegrityError(
                f"model version {version}: unlisted extra file(s) not in the manifest: {', '.join(extra)}; "
                f"remove them or {advice}"
            )
        for rel, full in actual.items():
            digest = sha256_file(full)
            if digest != expected[rel]:
                raise ModelIntegrityError(
                    f"model version {version}: file {rel} was modified (sha256 {digest} != manifest "
                    f"{expected[rel]}); {advice}"
                )

    def sign(self, version: str) -> ModelVersion:
        """Sign a version's manifest with :attr:`signing_key` (a version registered before signing
        existed, or signed with a key that was replaced); the files must match the manifest's hashes.

        Only sign versions whose files you trust: signing vouches for them. A version already signed
        with this key is returned unchanged.

        Raises
        ------
        KeyError
            No such version.
        ModelIntegrityError
            Its manifest is missing or corrupt, a file differs from the manifest, or it is already
            signed with this key but its manifest was changed since (restore it instead).
        """
        with self._lock():
            mv = self.get(version)
            signature = mv.manifest.get(SIGNATURE_FIELD)
            if isinstance(signature, Mapping) and signature.get("key_id") == self.signing_key.key_id:
                self.signing_key.check(version, mv.manifest)  # a manifest changed under this key stays refused
                return mv
            self._check_files(mv)
            manifest = _thaw(mv.manifest)
            manifest[SIGNATURE_FIELD] = self.signing_key.sign(manifest)
            _write_json_atomic(mv.path / MANIFEST_NAME, manifest)
        logger.warning("signed model version %s with key %s", version, self.signing_key.key_id)
        return ModelVersion(version=version, path=mv.path, manifest=_freeze(manifest))

    def rewrite_files(self, version: str, replacements: Mapping[str, Path], *, reason: str) -> ModelVersion:
        """Replace files of a registered version in place (e.g. a user's rows erased from its ALS files),
        then re-hash them and re-sign the manifest; the version keeps its name and place in the history.

        The version must verify first (a tampered version is never re-signed). Each replacement is
        renamed over its file, then the manifest (its ``files`` hashes and a ``rewritten`` entry: when,
        why, which files) is signed and written atomically. A crash between the two leaves a version
        that fails verification (served as a tampered one: the service falls back) until rewritten again.
        A service already serving the version keeps the files it loaded (it reloads on a new champion).

        Parameters
        ----------
        replacements
            Manifest-relative file name -> a new file (moved, so it no longer exists afterwards); each
            name must already be listed in the manifest.

        Raises
        ------
        KeyError
            No such version.
        ModelIntegrityError
            The version does not verify.
        ValueError
            A replacement names a file the version does not have.
        """
        with self._lock():
            mv = self.verify(version)
            unknown = sorted(set(replacements) - set(mv.files))
            if unknown:
                raise ValueError(f"model version {version} has no file(s) {', '.join(unknown)} to rewrite")
            manifest = _thaw(mv.manifest)
            for rel, new in replacements.items():
                target = mv.path / rel
                shutil.move(str(new), str(target.with_name(f".{target.name}.rewrite")))
                os.replace(target.with_name(f".{target.name}.rewrite"), target)
                manifest["files"][rel] = sha256_file(target)
            history = list(manifest.get("rewritten", []))
            history.append({"at": _utcnow().isoformat(), "reason": reason, "files": sorted(replacements)})
            manifest["rewritten"] = history
            manifest.pop(SIGNATURE_FIELD, None)
            manifest[SIGNATURE_FIELD] = self.signing_key.sign(manifest)
            _write_json_atomic(mv.path / MANIFEST_NAME, manifest)
            _fsync_dir(mv.path)
        logger.warning(
            "rewrote %d file(s) of model version %s (%s) and signed it again", len(replacements), version, reason
        )
        return ModelVersion(version=version, path=mv.path, manifest=_freeze(manifest))

    # ------------------------------------------------------------------ registry state

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover
            yield
            return
        with (self.root / ".registry.lock").open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read_state(self, *, verify_signature: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
        """Return (history, champion stack); the stack is replayed from the history and checked, then
        the state's signature (which :meth:`sign_state` and every promotion or rollback write)."""
        if not self.registry_path.exists():
            return [], []
        advice = f"restore {self.registry_path} from backup"
        try:
            state = json.loads(self.registry_path.read_text(encoding="utf-8"))
            history = state["history"]
            stored_champion = state["champion"]
            if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
                raise TypeError("'history' is not a list of objects")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelIntegrityError(f"{REGISTRY_NAME} is unreadable ({exc!r}); {advice}") from exc
        stack: list[str] = []
        for i, entry in enumerate(history):
            action, version = entry.get("action"), entry.get("version")
            if action == "promote" and isinstance(version, str):
                if not stack or stack[-1] != version:
                    stack.append(version)
            elif action == "rollback" and len(stack) >= 2 and stack[-2] == version:
                stack.pop()
            else:
                raise ModelIntegrityError(f"{REGISTRY_NAME}: history entry {i} is inconsistent ({entry}); {advice}")
        champion = stack[-1] if stack else None
        if stored_champion != champion:
            raise ModelIntegrityError(
                f"{REGISTRY_NAME}: champion {stored_champion!r} does not match its history ({champion!r}); {advice}"
            )
        if verify_signature:
            self._check_state_signature(state)
        return history, stack

    def _check_state_signature(self, state: Mapping[str, Any]) -> None:
        """Refuse a ``registry.json`` not signed by this deployment's key: otherwise whoever can write the
        models folder could choose the champion (e.g. an older, genuinely signed version)."""
        problem = self.signing_key.signature_problem(state, prefix=_REGISTRY_SIGNED_PREFIX)
        if problem is None:
            return
        if problem == "unsigned":
            detail = "is not signed (written before the registry state was signed, or its signature was removed)"
        elif problem.startswith("other key"):
            detail = f"was signed with another key ({problem}; the configured key's id is {self.signing_key.key_id})"
        else:
            detail = f"does not match its signature ({problem}): it was changed outside the pipeline"
        raise ModelIntegrityError(
            f"{REGISTRY_NAME} (which version is champion) {detail}; no champion is served from it. Restore it "
            "from backup, or, only if you trust its promotion history, sign it with `recs sign-models --registry`"
        )

    def _write_state(self, history: list[dict[str, Any]], champion: str) -> None:
        state: dict[str, Any] = {"champion": champion, "history": history}
        state[SIGNATURE_FIELD] = self.signing_key.sign(state, prefix=_REGISTRY_SIGNED_PREFIX)
        _write_json_atomic(self.registry_path, state)

    def sign_state(self) -> bool:
        """Sign ``registry.json`` with :attr:`signing_key` (a state written before it was signed, or under a
        replaced key); its history must be consistent. Returns False when it was signed already.

        Signing vouches for the promotion history: only sign a state you trust.
        """
        with self._lock():
            history, stack = self._read_state(verify_signature=False)
            if not stack:
                return False  # nothing promoted: nothing to sign
            state = json.loads(self.registry_path.read_text(encoding="utf-8"))
            if self.signing_key.signature_problem(state, prefix=_REGISTRY_SIGNED_PREFIX) is None:
                return False
            self._write_state(history, stack[-1])
        logger.warning("signed %s with key %s", self.registry_path, self.signing_key.key_id)
        return True

    def history(self) -> list[dict[str, Any]]:
        """Promotion/rollback history, oldest first (a copy of ``registry.json``'s ``history``)."""
        return self._read_state()[0]

    def champion(self) -> ModelVersion | None:
        """The current champion (manifest read, not verified), or ``None`` if there is none.

        Raises
        ------
        ModelIntegrityError
            ``registry.json`` is corrupt, or the champion's folder or manifest is missing/corrupt.
        """
        _, stack = self._read_state()
        if not stack:
            return None
        try:
            return self.get(stack[-1])
        except KeyError:
            raise ModelIntegrityError(
                f"champion model version {stack[-1]}: its folder {self.versions_dir / stack[-1]} is missing; "
                f"restore it from backup or roll back"
            ) from None

    def previous_champions(self) -> list[str]:
        """Earlier champions still on the promotion stack, newest first (what successive rollbacks would
        serve), without the current champion and without repeats; not verified."""
        _, stack = self._read_state()
        current = stack[-1] if stack else None
        seen: list[str] = []
        for version in reversed(stack[:-1]):
            if version != current and version not in seen:
                seen.append(version)
        return seen

    def challengers(self) -> list[ModelVersion]:
        """Versions registered after the current champion that were never promoted, oldest first.

        With no champion, every never-promoted version is a challenger.
        """
        history, stack = self._read_state()
        promoted = {e["version"] for e in history if e["action"] == "promote"}
        current = stack[-1] if stack else ""
        return [self.get(n) for n in self._version_names() if n > current and n not in promoted]

    def promote(self, version: str, *, reason: str) -> ModelVersion:
        """Verify a version and make it the champion, recording a ``promote`` history entry.

        Promoting the current champion again is a no-op (nothing recorded). Gate the call with
        :func:`should_promote`.

        Raises
        ------
        KeyError
            No such version.
        ModelIntegrityError
            The version fails :meth:`verify` (the champion is unchanged).
        """
        with self._lock():
            history, stack = self._read_state()
            mv = self.verify(version)
            if stack and stack[-1] == version:
                logger.info("model version %s is already the champion; nothing to do", version)
                return mv
            entry = {"version": version, "action": "promote", "at": _utcnow().isoformat(), "reason": reason}
            self._write_state([*history, entry], version)
        logger.info(
            "promoted model version %s (previous champion %s): %s", version, stack[-1] if stack else None, reason
        )
        return mv

    def rollback(self, *, reason: str) -> ModelVersion:
        """Pop the current champion: the previous distinct champion takes over (after verification).

        Records a ``rollback`` history entry whose ``version`` is the new champion and ``from`` the
        demoted one. Rolling back twice goes back two promotions.

        Raises
        ------
        ValueError
            There is no previous champion to roll back to.
        ModelIntegrityError
            The previous champion fails :meth:`verify` (the champion is unchanged).
        """
        with self._lock():
            history, stack = self._read_state()
            if len(stack) < 2:
                current = stack[-1] if stack else None
                raise ValueError(
                    f"cannot roll back in {self.root}: no previous champion before {current!r}; promote a version instead"
                )
            target, demoted = stack[-2], stack[-1]
            mv = self.verify(target)
            entry = {
                "version": target,
                "action": "rollback",
                "from": demoted,
                "at": _utcnow().isoformat(),
                "reason": reason,
            }
            self._write_state([*history, entry], target)
        logger.warning("rolled back champion %s -> %s: %s", demoted, target, reason)
        return mv

    def load_champion(self) -> ModelVersion:
        """Verify and return the champion.

        Raises
        ------
        NoChampionError
            Nothing is promoted.
        ModelIntegrityError
            The champion fails :meth:`verify`.
        """
        mv = self.champion()
        if mv is None:
            raise NoChampionError(f"no champion model in {self.root}; register a version and promote() it first")
        return self.verify(mv.version)


def _metric(metrics: Mapping[str, float], metric: str, who: str) -> float:
    if metric not in metrics:
        raise ValueError(f"metric {metric!r} is missing from the {who} metrics (has: {', '.join(map(str, metrics))})")
    value = metrics[metric]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{who} metric {metric!r} must be a finite number, got {value!r}")
    return float(value)


def should_promote(
    challenger_metrics: Mapping[str, float],
    *,
    champion_metrics: Mapping[str, float] | None,
    baseline_metrics: Mapping[str, Mapping[str, float]],
    metric: str = "ndcg@20",
) -> tuple[bool, str]:
    """Promotion gate: the challenger must strictly beat the champion (if any) and every baseline.

    Parameters
    ----------
    challenger_metrics : Mapping[str, float]
        Metrics of the candidate version.
    champion_metrics : Mapping[str, float] or None
        Metrics of the current champion; ``None`` when there is none (baselines only).
    baseline_metrics : Mapping[str, Mapping[str, float]]
        Baseline name -> its metrics (e.g. ``{"popularity": {...}}``); must not be empty.
    metric : str
        Metric to compare; higher is better.

    Returns
    -------
    tuple[bool, str]
        The verdict (ties fail) and an explanation with the numbers.

    Raises
    ------
    ValueError
        The metric is missing or not a finite number anywhere, or there are no baselines.
    """
    if not baseline_metrics:
        raise ValueError("baseline_metrics is empty; the gate needs at least one baseline to compare against")
    value = _metric(challenger_metrics, metric, "challenger")
    rivals: list[tuple[str, float]] = []
    if champion_metrics is not None:
        rivals.append(("champion", _metric(champion_metrics, metric, "champion")))
    for name, metrics in baseline_metrics.items():
        rivals.append((f"baseline {name}", _metric(metrics, metric, f"baseline {name!r}")))
    beaten = [(who, v) for who, v in rivals if value > v]
    lost = [(who, v) for who, v in rivals if not value > v]

    def fmt(items: list[tuple[str, float]]) -> str:
        return ", ".join(f"{who} {v:.4f}" for who, v in items)

    head = f"challenger {metric} {value:.4f}"
    if not lost:
        champ = "" if champion_metrics is not None else " (no champion)"
        return True, f"{head} beats {fmt(beaten)}{champ}"
    msg = f"{head} does not beat {fmt(lost)}"
    if beaten:
        msg += f" (beats {fmt(beaten)})"
    return False, msg
