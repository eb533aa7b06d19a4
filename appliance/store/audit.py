"""Who did it, and what changed: the actor of CLI audit entries and the configuration record.

audit entries for export, erase, purge, verify and configuration changes, each
naming the actor — the user, plus the SSH client address when there is one. The chain itself
lives in :mod:`appliance.store.db`.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Final

from appliance.store.db import Store, canonical_json

_LOGGER = logging.getLogger(__name__)

#: meta key holding the canonical JSON of the last configuration the audit chain saw.
CONFIG_META_KEY: Final = "config_json"
#: Audit action for a configuration difference.
CONFIG_CHANGED: Final = "config-changed"


def current_actor(environ: Mapping[str, str] | None = None) -> str:
    """Return the actor string for an audit entry made by this process.

    ``cli:<user>`` or ``cli:<user>@<ssh client address>``. Under ``sudo -u appliance`` (how
    the write commands are run, like Mopidy's ``mopidyctl``) the user is ``$SUDO_USER``, the
    person, not the service account. The address is the first field of ``$SSH_CONNECTION``
    (``client-ip client-port server-ip server-port``, ssh(1) ENVIRONMENT) or ``$SSH_CLIENT``.

    Args:
        environ: the environment to read (default ``os.environ``; tests pass their own).
    """
    env = os.environ if environ is None else environ
    user = env.get("SUDO_USER") or ""
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry and no $USER (a bare container)
            user = f"uid{os.getuid()}"
    actor = f"cli:{user}"
    ssh = (env.get("SSH_CONNECTION") or env.get("SSH_CLIENT") or "").split()
    if ssh:
        actor += f"@{ssh[0]}"
    return actor


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of a nested config dict (lists of tables keep their index)."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{i}]"))
    else:
        out[prefix] = value
    return out


def config_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]
                   ) -> dict[str, list[Any]]:
    """Return ``{dotted.key: [old, new]}`` for every key that differs (old None = first)."""
    before = _flatten(old or {})
    after = _flatten(new)
    return {
        key: [before.get(key), after.get(key)]
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }


def record_config(store: Store, config: Mapping[str, Any], *, actor: str,
                  source: str | None = None) -> str | None:
    """Append a ``config-changed`` audit entry if the effective configuration changed.

    The configuration is a file an administrator edits; nothing sees the edit itself, so
    every records command (and the daily purge) compares the effective configuration with
    the one last recorded and audits the difference. ``actor`` is whoever ran the command
    that noticed it; the details name every changed key with its old and new value (the
    configuration holds no caller data).

    Args:
        store: an open index.
        config: ``Config.to_dict()``.
        actor: see :func:`current_actor`.
        source: the configuration file, for the details.

    Returns:
        The audit hash, or None when the configuration is unchanged.
    """
    value = canonical_json(config)

    def details_for(old_json: str | None) -> dict[str, Any]:
        old = None
        if old_json is not None:
            try:
                old = json.loads(old_json)
            except ValueError:
                _LOGGER.warning("Recorded configuration is unreadable; treating as none")
        return {
            "sha256": hashlib.sha256(value.encode("utf-8")).hexdigest(),
            "first": old_json is None,
            "source": source,
            "changed": config_changes(old, config),
        }

    digest = store.compare_and_audit_sync(CONFIG_META_KEY, value, action=CONFIG_CHANGED,
                                          actor=actor, details_for=details_for)
    if digest is not None:
        _LOGGER.info("Configuration change recorded in the audit chain")
    return digest
