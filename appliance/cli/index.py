"""``appliance index rebuild``: put the index back together from the recordings' sidecars.

For an index that was lost, emptied, replaced by an old copy or damaged (the daemon then shows
fault code 8 and does not answer; ``appliance doctor`` advises this command). Run it as the
service user with the daemon stopped: ``sudo systemctl stop appliance; sudo -u appliance
appliance index rebuild; sudo systemctl start appliance``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from appliance.cli.context import CliContext


@click.group("index")
def index() -> None:
    """Maintain the call index (appliance.db)."""


@index.command("rebuild")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_obj
def rebuild(obj: CliContext, as_json: bool) -> None:
    """Rebuild the index from the call record files and raise the reference counter.

    Every call the index does not know gets its row back from its record file
    (<reference>.json beside its recording, or alone for a call not recorded): outcome,
    recording decision, caller, times, notice. A recording sidecar from before record files
    gives a row with outcome "unknown". A damaged index file is moved aside
    (appliance.db.corrupt-<time>), never deleted; the reference counter is raised past every
    reference ever issued, so none is issued twice. References issued but found nowhere are
    counted. Audited as index-rebuilt.
    """
    from appliance.cli.context import fail
    from appliance.daemon.control import request, socket_path
    from appliance.errors import StoreError
    from appliance.store.audit import current_actor
    from appliance.store.highwater import REFERENCE_KEY_FILE
    from appliance.store.rebuild import rebuild_index

    config = obj.config()
    state = config.device.state_dir
    try:
        request(socket_path(state), {"cmd": "status"})
    except (OSError, ValueError):
        pass  # not running (or not ours to ask): go on
    else:
        fail("the daemon is running; stop it first (sudo systemctl stop appliance), then "
             "rebuild")
    try:
        key: bytes | None = (state / REFERENCE_KEY_FILE).read_bytes()
    except FileNotFoundError:
        key = None
    except OSError as exc:
        fail(f"cannot read {state / REFERENCE_KEY_FILE}: {exc.strerror}")
    try:
        report = rebuild_index(config.db_path, config.recordings_dir, state, key,
                               actor=current_actor())
    except (StoreError, OSError) as exc:
        fail(f"cannot rebuild the index: {exc}")
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        if report.moved_aside is not None:
            click.echo(f"the damaged index was moved to {report.moved_aside}")
        click.echo(f"{report.sidecars} call record(s) read ({report.unrecorded} of calls not "
                   f"recorded), {report.added} call(s) added ({report.partials} unfinished, "
                   f"finalized at the daemon's next start); reference counter now "
                   f"{report.counter}")
        if report.not_indexed:
            click.echo(f"{report.not_indexed} reference(s) issued earlier left no record file "
                       "and are not in the index (their records are lost)")
        if key is None:
            click.echo("appliance: WARNING: no device key (reference.key): the counter comes "
                       "from the high-water mark only", err=True)
        for problem in report.problems:
            click.echo(f"appliance: WARNING: {problem}", err=True)


def register(group: click.Group) -> None:
    """Add ``appliance index`` to the main group."""
    group.add_command(index)
