"""The owner's page commands: ``appliance web`` (serve, ``cert``) and ``appliance user …``.

Registered on the main group by :func:`register`. The page's own modules are imported inside
the commands, so the other commands keep their start-up time.
"""

from __future__ import annotations

import secrets
import sys
from typing import TYPE_CHECKING, Any

import click

from appliance.cli.context import fail

if TYPE_CHECKING:
    from appliance.cli.context import CliContext
    from appliance.config import Config
    from appliance.web.accounts import Accounts

#: Loopback port of the demo's page (plain HTTP).
DEMO_WEB_PORT = 8080
DEMO_ACCOUNT = "demo"


def _cli_args(obj: CliContext, config: Config) -> tuple[str, ...]:
    """``--config``/``--state-dir`` for the child ``appliance doctor`` of the health page."""
    args: list[str] = []
    if obj.config_path is not None:
        args += ["--config", str(obj.config_path)]
    args += ["--state-dir", str(config.device.state_dir)]
    return tuple(args)


def serve(config: Config, *, listen: str, port: int, tls: bool,
          cli_args: tuple[str, ...] = (), ready: Any = None) -> None:
    """Run the page until SIGINT/SIGTERM (blocking).

    Args:
        config: the effective configuration.
        listen, port, tls: where and how (plain HTTP only on loopback; checked by the caller).
        cli_args: for child ``appliance`` commands.
        ready: called with the URL once the socket listens (the demo prints it).
    """
    # Nothing the page runs needs numpy; this guard keeps any import from loading it, so the
    # page stays inside its 50 MB RSS budget (docs/performance.md). The audio stack is only
    # ever loaded by the child jobs.
    if "numpy" not in sys.modules:
        sys.modules["numpy"] = None  # type: ignore[assignment]
    import uvicorn

    from appliance.web.app import WebSettings, create_app
    from appliance.web.tls import cert_paths, fingerprint

    cert, key = cert_paths(config.web_dir)
    if tls and not (cert.exists() and key.exists()):
        fail(f"no TLS certificate at {cert} — make one with `appliance web cert` "
             "(setup.sh install does)")
    # Secure cookies on HTTPS; over the loopback-only plain HTTP (demo, tests) browsers differ
    # on accepting a Secure cookie from http://127.0.0.1, and it would protect nothing there.
    settings = WebSettings.from_config(config, secure_cookies=tls,
                                       fingerprint=fingerprint(cert) if tls else None,
                                       cli_args=cli_args)
    app = create_app(settings)
    scheme = "https" if tls else "http"
    url = f"{scheme}://{f'[{listen}]' if ':' in listen else listen}:{port}/"

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and ready is not None:
                ready(url)

    _Server(uvicorn.Config(
        app, host=listen, port=port, http="h11", ws="none", loop="asyncio",
        lifespan="on", log_level="warning", server_header=False, proxy_headers=False,
        ssl_certfile=str(cert) if tls else None, ssl_keyfile=str(key) if tls else None)).run()


@click.group(invoke_without_command=True)
@click.option("--listen", help="Address to listen on [default: web.listen].")
@click.option("--port", type=int, help="TCP port [default: web.port].")
@click.option("--http", "plain_http", is_flag=True,
              help="Plain HTTP (only with a loopback --listen such as 127.0.0.1).")
@click.pass_context
def web(ctx: click.Context, listen: str | None, port: int | None, plain_http: bool) -> None:
    """Serve the owner's page: find, play, hand over and erase calls (docs/web.md).

    HTTPS on the shop's network with the certificate made at install; plain HTTP only on
    loopback. Accounts: `appliance user add NAME --role owner`.
    """
    if ctx.invoked_subcommand is not None:
        return
    from appliance.config import LOOPBACK_ADDRESSES
    from appliance.logs import setup_logging

    obj: CliContext = ctx.obj
    config = obj.config()
    setup_logging(config.logging.level)
    listen = listen or config.web.listen
    tls = config.web.tls and not plain_http
    if not tls and listen not in LOOPBACK_ADDRESSES:
        raise click.UsageError(f"plain HTTP only on loopback ({', '.join(LOOPBACK_ADDRESSES)}),"
                               f" not on {listen}")
    serve(config, listen=listen, port=port or config.web.port, tls=tls,
          cli_args=_cli_args(obj, config))


@web.command("cert")
@click.option("--hostname", help="Name for <hostname>.local [default: this machine's].")
@click.option("--force", is_flag=True, help="Replace an existing certificate.")
@click.pass_obj
def web_cert(obj: CliContext, hostname: str | None, force: bool) -> None:
    """Make the page's TLS certificate (once; setup.sh install runs this) and print its
    SHA-256 fingerprint."""
    from appliance.web.tls import fingerprint, make_certificate

    config = obj.config()
    try:
        cert, made = make_certificate(config.web_dir, hostname=hostname, force=force)
    except (RuntimeError, OSError) as exc:
        fail(str(exc))
    click.echo(f"{'made' if made else 'kept'} {cert}")
    click.echo(f"SHA-256 fingerprint: {fingerprint(cert)}")


# --- accounts --------------------------------------------------------------------------------


def _accounts(obj: CliContext) -> Accounts:
    from appliance.web.accounts import Accounts

    return Accounts.in_dir(obj.config().web_dir)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


def _account_errors(fn: Any) -> Any:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from appliance.web.accounts import AccountError

        try:
            return fn(*args, **kwargs)
        except AccountError as exc:
            fail(str(exc))
        except PermissionError as exc:
            fail(f"{exc.filename}: {exc.strerror} — run as the page's user "
                 "(sudo appliance-webctl user …)")

    return wrapper


@click.group()
def user() -> None:
    """Accounts of the owner's page (roles: staff, owner, technician)."""


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["owner", "staff", "technician"]), required=True,
              help="staff: search and play; owner: also hand over and erase; technician: "
                   "status, health, logs and audit, no audio.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.pass_obj
@_account_errors
def user_add(obj: CliContext, name: str, role: str, password_stdin: bool) -> None:
    """Add an account."""
    accounts = _accounts(obj)
    accounts.add(name, role, _password(password_stdin))
    click.echo(f"added {name} ({role})")


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.pass_obj
@_account_errors
def user_passwd(obj: CliContext, name: str, password_stdin: bool) -> None:
    """Set an account's password (ends its sessions, clears a lockout)."""
    accounts = _accounts(obj)
    if accounts.get(name) is None:
        fail(f"no account {name!r}")
    accounts.set_password(name, _password(password_stdin))
    click.echo(f"password of {name} changed")


@user.command("remove")
@click.argument("name")
@click.pass_obj
@_account_errors
def user_remove(obj: CliContext, name: str) -> None:
    """Remove an account (its sessions end at once)."""
    _accounts(obj).remove(name)
    click.echo(f"removed {name}")


@user.command("list")
@click.pass_obj
@_account_errors
def user_list(obj: CliContext) -> None:
    """List the accounts."""
    import time

    rows = _accounts(obj).list()
    if not rows:
        click.echo("no accounts (add one: appliance user add NAME --role owner)")
        return
    now = time.time()
    for a in rows:
        locked = "  LOCKED" if a.locked_until > now else ""
        click.echo(f"{a.name:<20} {a.role:<11} since "
                   f"{time.strftime('%Y-%m-%d', time.localtime(a.created_at))}{locked}")


def demo_web(config: Config, port: int = DEMO_WEB_PORT) -> None:
    """After ``appliance demo --web``: a demo owner account and the page on loopback."""
    from appliance.web.accounts import Accounts

    accounts = Accounts.in_dir(config.web_dir)
    password = secrets.token_urlsafe(9)
    if accounts.get(DEMO_ACCOUNT) is None:
        accounts.add(DEMO_ACCOUNT, "owner", password)
    else:
        accounts.set_password(DEMO_ACCOUNT, password)

    def ready(url: str) -> None:
        click.echo("")
        click.echo(f"The owner's page: {url}")
        click.echo(f"  account  {DEMO_ACCOUNT}")
        click.echo(f"  password {password}")
        click.echo("Ctrl-C stops it.")

    serve(config, listen="127.0.0.1", port=port, tls=False,
          cli_args=("--state-dir", str(config.device.state_dir)), ready=ready)


def register(group: click.Group) -> None:
    """Add ``web`` and ``user`` to the ``appliance`` group."""
    group.add_command(web)
    group.add_command(user)

