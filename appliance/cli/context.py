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

import errno
import functools
import json
import os
import shutil
import stat
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import click

from appliance.config import EXIT_CONFIG

if TYPE_CHECKING:
    from appliance.config import Config
    from appliance.store.db import Store

_F = TypeVar("_F", bound=Callable[..., Any])

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


#: What to do about an index or state directory this user may not open.
ACCESS_HINT: Final = ("Run it as the service user (sudo -u appliance appliance …; appliancectl "
                      "on a box) or join the 'appliance' group.")
#: What to do about a damaged index (the same advice as ``appliance doctor``).
DAMAGED_HINT: Final = ("Rebuild it from the recordings' JSON sidecars: sudo systemctl stop "
                       "appliance; sudo -u appliance appliance index rebuild; sudo systemctl "
                       "start appliance (docs/records.md, \"A lost index\").")
_DENIED_ERRNOS: Final = (errno.EACCES, errno.EPERM)
#: Less free space than this is a full disk (SQLite needs a page or two to open an index).
_FULL_BYTES: Final = 64 * 1024


def store_problem(path: Path | None, error: BaseException, hint: str = ACCESS_HINT) -> str:
    """One line for a person: why the index (at ``path``, if known) could not be used, and
    what to do (:func:`classify_store_error` joined)."""
    what, fix = classify_store_error(path, error, hint)
    return f"{what}. {fix}" if fix else what


def classify_store_error(path: Path | None, error: BaseException, hint: str = ACCESS_HINT
                         ) -> tuple[str, str]:
    """``(what happened, what to do)`` for an error opening or using the index.

    ``error`` is a StoreError, an sqlite3 error or an OSError; the categories are the ones a
    technician can act on: no permission (``hint``), read-only, disk full, damaged. Anything
    else is the error's own text and no advice.
    """
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    lowered = text.lower()
    code = error.errno if isinstance(error, OSError) else None
    subject = text if path is None or str(path) in text else f"{path}: {text}"
    opening = subject if lowered.startswith("cannot") else f"cannot open {subject}"
    if code in _DENIED_ERRNOS or "permission" in lowered:
        return opening, hint
    if code == errno.EROFS or any(w in lowered for w in ("readonly", "read-only",
                                                         "unable to open")):
        why = ""
        if path is not None and not os.access(path.parent, os.W_OK):
            why = (f" ({path.parent} is not writable: SQLite needs to create appliance.db-wal "
                   "and -shm beside the index)")
        return f"{opening}{why}", hint
    if code == errno.ENOSPC or "disk is full" in lowered or (
            "disk i/o error" in lowered and path is not None and _disk_full(path.parent)):
        # SQLite says "disk I/O error" when it cannot create the -shm file on a full disk.
        return f"the disk is full ({subject})", "Free space (appliance purge) and try again."
    if any(w in lowered for w in ("not a database", "malformed", "quick_check", "corrupt")):
        return f"the index is damaged ({subject})", DAMAGED_HINT
    return subject, ""


def _disk_full(directory: Path) -> bool:
    """True when the file system holding ``directory`` has (almost) no free space left."""
    try:
        return shutil.disk_usage(directory).free < _FULL_BYTES
    except OSError:
        return False


def open_store(obj: CliContext, *, check: bool = False, hint: str = ACCESS_HINT) -> Store:
    """Open the configured index; every way that fails is a message and exit 1.

    No index at all, one this user may not read, a read-only or full state directory, a
    damaged file: each is :func:`store_problem`'s sentence, never a traceback. ``check`` runs
    SQLite's quick_check first (``verify``; quick reads skip it).
    """
    from appliance.errors import StoreError
    from appliance.store.db import Store

    path = obj.config().db_path
    try:
        path.stat()  # not Path.exists: EACCES must not read as "no index"
    except FileNotFoundError:
        fail(f"no index at {path} (no call yet, or wrong --state-dir)")
    except OSError as exc:
        fail(store_problem(path, exc, hint))
    try:
        return Store.open(path, check=check)
    except (StoreError, OSError) as exc:
        fail(store_problem(path, exc, hint))


def guard_store_errors(hint: str = ACCESS_HINT) -> Callable[[_F], _F]:
    """Decorator for a command: an index or file error mid-command is a message and exit 1.

    A command opens the index with :func:`open_store`; what can still go wrong after that
    (a damaged page found by a query, the disk filling up, a file it may not read) ends here
    instead of in a traceback.
    """

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            import sqlite3

            from appliance.errors import StoreError

            try:
                return fn(*args, **kwargs)
            except (StoreError, sqlite3.Error) as exc:
                obj = next((a for a in args if isinstance(a, CliContext)), None)
                fail(store_problem(obj.config().db_path if obj else None, exc, hint))
            except OSError as exc:
                fail(store_problem(Path(exc.filename) if exc.filename else None, exc, hint))

        return typing.cast(_F, wrapper)

    return decorate


def check_output_path(path: Path, *, force: bool, option: str) -> bool:
    """Exit 1 unless writing ``path`` replaces nothing the command did not create.

    Nothing there: fine (False). A regular file: replaced only with ``--force`` (True). Anything
    else — a device node (``/dev/full`` was once replaced by a WAV), a directory, a symlink, a
    FIFO or socket — never, not even with ``--force``.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        fail(f"cannot check {path}: {exc.strerror}")
    if not stat.S_ISREG(st.st_mode):
        fail(f"{path} exists and is {_file_kind(st.st_mode)}: not replaced (not even with "
             f"--force); choose another {option}")
    if not force:
        fail(f"{path} exists; choose another {option}, or add --force to replace it")
    return True


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def row_view(row: dict[str, Any]) -> dict[str, Any]:
    """A call row as people read it: the reference formatted with its dashes."""
    from appliance.reference import format_reference

    view = dict(row)
    view["reference"] = format_reference(row["reference"])
    if isinstance(view.get("notice_layers"), str):
        # What the caller was told (docs/records.md), as the list it is.
        view["notice_layers"] = json.loads(view["notice_layers"])
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
