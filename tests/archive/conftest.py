"""A real SeaweedFS S3 server on loopback (appliance.sim.objectstore) and a box configured to
archive to it. The server is shared by a module's tests (each box gets its own prefix);
tests that stop the server start their own."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage
import pytest

from appliance.archive.s3 import Credentials, write_credentials
from appliance.config import Config, load_config
from appliance.sim.objectstore import ObjectStore

BUCKET = "archive"
#: A bucket only the head-office test writes to (it lists every box in its bucket).
CHAIN_BUCKET = "chain"


@pytest.fixture(scope="module")
def objectstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    store = ObjectStore(tmp_path_factory.mktemp("s3"), buckets=(BUCKET, CHAIN_BUCKET))
    store.start()
    try:
        yield store
    finally:
        store.stop()


@dataclass
class Box:
    """One box's state directory and configuration, and the owner's identity."""

    state_dir: Path
    config: Config
    credentials: Credentials
    identity: Any
    identity_file: Path
    config_file: Path
    prefix: str


def make_box(tmp_path: Path, server: ObjectStore, *, prefix: str | None = None,
             secret_key: str | None = None, bucket: str = BUCKET,
             **archive: Any) -> Box:
    """A state directory whose ``[archive]`` points at ``server`` (written as a TOML file
    too, for the CLI)."""
    prefix = prefix or "box-" + secrets.token_hex(3)
    identity = pyrage.x25519.Identity.generate()
    identity_file = tmp_path / "owner.agekey"
    identity_file.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
    identity_file.chmod(0o600)
    credentials = Credentials(server.access_key, secret_key or server.secret_key)
    cred_file = tmp_path / "archive-credentials.toml"
    write_credentials(cred_file, credentials)
    state_dir = tmp_path / "state"
    settings: dict[str, Any] = {
        "enabled": True, "endpoint": server.endpoint, "bucket": bucket, "prefix": prefix,
        "credentials_file": str(cred_file), "recipients": [str(identity.to_public())],
        "poll_s": 0.2, "retry_max_s": 1.0, **archive,
    }
    config = load_config(None, state_dir=state_dir, overrides={"archive": settings})
    config_file = tmp_path / "config.toml"
    lines = ["[device]", f'state_dir = "{state_dir}"', "[archive]"]
    for key, value in settings.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(v) for v in value)}]".replace("'", '"'))
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    config_file.write_text("\n".join(lines) + "\n")
    return Box(state_dir, config, credentials, identity, identity_file, config_file, prefix)
