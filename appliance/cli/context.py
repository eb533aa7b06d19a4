"""What every ``appliance`` subcommand shares: exit codes, the context object, failing cleanly.

Every command module imports this one and none imports :mod:`appliance.cli.main`, so the
command modules and the group that registers them form no import cycle.

Exit codes (the same for every command, listed in ``appliance --help``):

* ``0`` ok
* ``1`` a check failed, or what was asked for was not found
* ``2`` usage error (click's own)
* ``3`` the daemon is not running (``status``)
* ``78`` configuration error (``EX_CONFIG`` from sysexits.h)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

import click

from appliance.config import EXIT_CONFIG

if TYPE_CHECKING:
    from appliance.config import Config
    from appliance.store.db import Store

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_RUNNING: Final = 3

EXIT_CODES_HELP: Final = (
    f"Exit codes: {EXIT_OK} ok, {EXIT_FAILED} a check failed or not found, {EXIT_USAGE} usage, "
    f"{EXIT_NOT_RUNNING} daemon not running, {EXIT_CONFIG} configuration error."
)

CONFIG_HELP: Final = ("TOML file laid over the defaults [env APPLIANCE_CONFIG; default "
                      "/etc/appliance/config.toml].")
STATE_DIR_HELP: Final = ("Index, recordings and caches [env APPLIANCE_STATE_DIR; default "
                         "/var/lib/appliance].")


class CliContext:
    """The options given to the ``appliance`` group (or to any subcommand), loaded lazily."""

    def __init__(self, config_path: Path | None, state_dir: Path | None) -> None:
        self.config_path = config_path
        self.state_dir = state_dir

    def config(self) -> Config:
        """The effective configuration; a configuration error exits 78 with the key named."""
        from appliance.config import load_config
        from appliance.errors import ConfigError

        try:
            return load_config(self.config_path, state_dir=self.state_dir)
        except ConfigError as exc:
            fail(f"configuration error: {exc}", EXIT_CONFIG)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``appliance: message`` on stderr and exit with ``code``."""
    click.echo(f"appliance: {message}", err=True)
    sys.exit(code)


def open_store(obj: CliContext, *, check: bool = False) -> Store:
    """Open the configured index for reading; no index at all is a message and exit 1.

    ``check`` runs SQLite's quick_check first (``verify``; quick reads skip it)."""
    from appliance.store.db import Store

    config = obj.config()
    if not config.db_path.exists():
        fail(f"no index at {config.db_path} (no call yet, or wrong --state-dir)")
    return Store.open(config.db_path, check=check)


def row_view(row: dict[str, Any]) -> dict[str, Any]:
    """A call row as people read it: the reference formatted with its dashes."""
    from appliance.call.reference import format_reference

    view = dict(row)
    view["reference"] = format_reference(row["reference"])
    return view


# --- --config / --state-dir accepted after the subcommand too ------------------------------------


def _remember(attribute: str) -> Any:
    def callback(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
        if value is not None:
            setattr(ctx.ensure_object(CliContext), attribute, value)

    return callback


def _path_option(name: str, attribute: str, help_text: str) -> click.Option:
    return click.Option([name], type=click.Path(path_type=Path), expose_value=False,
                        callback=_remember(attribute), help=help_text)


class CommonOptionsGroup(click.Group):
    """A group whose every subcommand also takes ``--config`` and ``--state-dir``.

    A technician types ``appliance calls --state-dir DIR`` as often as ``appliance
    --state-dir DIR calls``; both mean the same. A value given after the subcommand wins over
    one given before it. Commands that define the option themselves keep their own.
    Commands of subgroups get them too.
    """

    group_class = type  # subgroups made with @group.group() are CommonOptionsGroups as well

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _add_common_options(cmd)
        super().add_command(cmd, name)


def _add_common_options(cmd: click.Command) -> None:
    """Give ``cmd`` (or every command of a group made elsewhere) ``--config``/``--state-dir``."""
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _add_common_options(sub)
        return
    taken = {opt for param in cmd.params for opt in getattr(param, "opts", ())}
    if "--config" not in taken:
        cmd.params.append(_path_option("--config", "config_path", CONFIG_HELP))
    if "--state-dir" not in taken:
        cmd.params.append(_path_option("--state-dir", "state_dir", STATE_DIR_HELP))
