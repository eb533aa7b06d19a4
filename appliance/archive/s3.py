"""The object store as the archive sees it: credentials, the client, the key layout.

Layout under the bucket (docs/archive.md)::

    <prefix>/calls/<reference>/recording.<ext>.age   the audio, age-encrypted
    <prefix>/calls/<reference>/sidecar.json.age      the recorder's sidecar
    <prefix>/calls/<reference>/proof.json.age        row, events, audit entries, hashes
    <prefix>/box/reference.key.age                   the reference key (restore needs it)
    <prefix>/index/…                                  Litestream's replica of the index

The client is boto3 (imported here only: the uploader and the CLI's archive commands are
separate processes, so the daemon never pays its ~50 MB). Retries are ours (the durable
queue's back-off), so botocore's own are off.
"""

from __future__ import annotations

import os
import socket
import stat
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

from appliance.config import ArchiveConfig
from appliance.errors import ApplianceError, ConfigError

#: boto3's S3 client (boto3 ships no type hints; mypy-boto3-s3 is not a dependency).
S3Client: TypeAlias = Any

#: Seconds to wait for a TCP connection / for data on it before the attempt counts as failed.
CONNECT_TIMEOUT_S: Final = 5.0
READ_TIMEOUT_S: Final = 60.0
#: Object kinds of one call, in upload order (the proof last: it vouches for the others).
CALL_KINDS: Final = ("recording", "sidecar", "proof")
AGE_SUFFIX: Final = ".age"
#: S3 DeleteObjects takes at most this many keys per request.
DELETE_BATCH: Final = 1000


class ArchiveError(ApplianceError):
    """The archive cannot do what was asked (service unreachable, refused, object altered)."""


class ServiceError(ArchiveError):
    """The object store as a whole is unusable right now (network, credentials, bucket):
    the whole queue waits, no single call is to blame."""


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:  # never print the secret into a log or a traceback
        return f"Credentials(access_key_id={self.access_key_id!r}, secret_access_key=***)"


def load_credentials(path: Path) -> Credentials:
    """Read ``access_key_id`` / ``secret_access_key`` (TOML) from ``path``.

    Raises:
        ConfigError: naming ``archive.credentials_file`` — missing, unreadable, readable by
            group or others (it must be 0600), or without both keys.
    """
    key = "archive.credentials_file"
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(key, "an existing file", str(path)) from None
    except OSError as exc:
        raise ConfigError(key, "a file this user can read", f"{path}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(key, "mode 0600 (readable by its owner only)",
                          f"{path} is {stat.S_IMODE(st.st_mode):04o}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(key, "TOML with access_key_id and secret_access_key",
                          f"{path}: {exc}") from None
    ak, sk = data.get("access_key_id"), data.get("secret_access_key")
    if not (isinstance(ak, str) and ak and isinstance(sk, str) and sk):
        raise ConfigError(key, "TOML with access_key_id and secret_access_key (strings)",
                          f"{path}: keys {sorted(data)}")
    return Credentials(ak, sk)


def write_credentials(path: Path, credentials: Credentials) -> None:
    """Write a credentials file (0600 from its first byte) — for the demo and the tests."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f'access_key_id = "{credentials.access_key_id}"\n'
                f'secret_access_key = "{credentials.secret_access_key}"\n')


def box_prefix(config: ArchiveConfig) -> str:
    """This box's folder in the bucket: ``archive.prefix``, else the host name."""
    return config.prefix or socket.gethostname().split(".")[0]


def call_prefix(prefix: str, reference: str) -> str:
    return f"{prefix}/calls/{reference}/"


def call_key(prefix: str, reference: str, kind: str, suffix: str = "") -> str:
    """Key of one object of a call (``suffix`` = the recording's extension, ``.flac``)."""
    name = {"recording": f"recording{suffix}", "sidecar": "sidecar.json",
            "proof": "proof.json"}[kind]
    return call_prefix(prefix, reference) + name + AGE_SUFFIX


def key_backup_key(prefix: str) -> str:
    return f"{prefix}/box/reference.key{AGE_SUFFIX}"


def index_path(prefix: str) -> str:
    """Litestream's replica path of the box's index."""
    return f"{prefix}/index"


def make_client(config: ArchiveConfig, credentials: Credentials) -> S3Client:
    """A boto3 S3 client for ``config.endpoint`` (path-style, our CA, no hidden retries)."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.session.Session().client(
        "s3",
        endpoint_url=config.endpoint,
        region_name=config.region,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        # A path (the CA file) or True (the system's trust store); never disabled.
        verify=config.ca_file or True,
        config=BotoConfig(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            # Content-MD5 is sent explicitly; no streaming checksum trailers, which not every
            # S3-compatible service understands.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def classify(exc: BaseException) -> ArchiveError:
    """Turn a botocore/network exception into :class:`ServiceError` (the service is down,
    refuses our credentials or lacks the bucket) or a plain :class:`ArchiveError`."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ArchiveError):
        return exc
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"{code or status}: {err.get('Message') or exc}"
        if code in ("NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "AccessDenied", "403") or status in (401, 403) or status >= 500:
            hint = {"NoSuchBucket": "the bucket does not exist",
                    "InvalidAccessKeyId": "the access key is not known to the service",
                    "SignatureDoesNotMatch": "the secret key is wrong"}.get(code)
            if hint is None and status == 403:
                hint = "access refused (wrong credentials or missing permission)"
            return ServiceError(f"{hint}: {text}" if hint else text)
        return ArchiveError(text)
    if isinstance(exc, BotoCoreError | OSError):
        return ServiceError(f"cannot reach the object store: {exc}")
    return ArchiveError(str(exc))


def check_bucket(client: S3Client, bucket: str) -> None:
    """Raise :class:`ServiceError` unless ``bucket`` exists and our credentials may use it."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status == 404:
            raise ServiceError(f"the bucket {bucket!r} does not exist") from exc
        raise classify(exc) from exc
    except BotoCoreError as exc:
        raise classify(exc) from exc


def iter_objects(client: S3Client, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Every current object under ``prefix`` (``Key``, ``Size``, ``ETag`` …)."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def delete_everything(client: S3Client, bucket: str, prefix: str) -> tuple[int, int]:
    """Delete every object under ``prefix`` — every version and delete marker where the
    bucket keeps versions (GDPR: an erased call must not linger as an old version).

    Returns:
        (distinct keys removed, versions and markers removed).

    Raises:
        ArchiveError: something is still there afterwards.
    """
    keys: set[str] = set()
    removed = 0
    for _pass in range(3):  # a second pass catches a version written while we deleted
        entries = _versions(client, bucket, prefix)
        if not entries:
            return len(keys), removed
        for start in range(0, len(entries), DELETE_BATCH):
            batch = entries[start:start + DELETE_BATCH]
            answer = client.delete_objects(Bucket=bucket,
                                           Delete={"Objects": batch, "Quiet": True})
            errors = answer.get("Errors", [])
            if errors:
                first = errors[0]
                raise ArchiveError(f"cannot delete {first.get('Key')}: {first.get('Code')} "
                                   f"{first.get('Message')}")
        keys.update(e["Key"] for e in entries)
        removed += len(entries)
    leftover = [e["Key"] for e in _versions(client, bucket, prefix)]
    if leftover:
        raise ArchiveError(f"still present after deletion: {', '.join(leftover[:3])}")
    return len(keys), removed


def _versions(client: S3Client, bucket: str, prefix: str) -> list[dict[str, str]]:
    """``{Key, VersionId}`` of every version and delete marker under ``prefix`` (plain keys
    where the service does not implement versioning)."""
    from botocore.exceptions import ClientError

    try:
        entries: list[dict[str, str]] = []
        paginator = client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                entry = {"Key": v["Key"]}
                if v.get("VersionId"):
                    entry["VersionId"] = v["VersionId"]
                entries.append(entry)
        return entries
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NotImplemented":
            raise
    return [{"Key": o["Key"]} for o in iter_objects(client, bucket, prefix)]
