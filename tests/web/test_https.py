"""HTTPS with the certificate made at install: the fingerprint the browser sees is the one the
page, ``status`` and ``doctor`` show; plain HTTP is refused off loopback."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
from pathlib import Path

from click.testing import CliRunner

from appliance.bench.web import free_port, start_process, stop_process
from appliance.cli.main import cli
from appliance.config import EXIT_CONFIG
from appliance.web.tls import fingerprint, make_certificate


def test_page_serves_https_with_the_fingerprint_it_shows(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cert, made = make_certificate(state / "web", hostname="shop")
    assert made
    assert (state / "web/tls.key").stat().st_mode & 0o777 == 0o600
    shown = fingerprint(cert)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = start_process(["--state-dir", str(state), "web", "--listen", "127.0.0.1", "--port",
                          str(port)], port, env=env)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection(("127.0.0.1", port), 5) as raw, \
                context.wrap_socket(raw, server_hostname="shop.local") as tls:
            der = tls.getpeercert(binary_form=True)
            tls.sendall(b"GET /login HTTP/1.1\r\nHost: shop.local\r\nConnection: close\r\n\r\n")
            body = b""
            while chunk := tls.recv(65536):
                body += chunk
        digest = hashlib.sha256(der).hexdigest().upper()
        assert shown == ":".join(digest[i:i + 2] for i in range(0, 64, 2))
        assert shown.encode() in body  # the footer
        assert b"Secure" in body.split(b"\r\n\r\n")[0]  # the login CSRF cookie
    finally:
        stop_process(proc)
    doctor = CliRunner().invoke(cli, ["--state-dir", str(state), "doctor", "--json"])
    assert shown in doctor.output


def test_plain_http_only_on_loopback(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path), "web", "--listen",
                                      "0.0.0.0", "--http"])
    assert result.exit_code == 2
    assert "loopback" in result.output
    config = tmp_path / "config.toml"
    config.write_text('[web]\ntls = false\nlisten = "0.0.0.0"\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "--state-dir", str(tmp_path),
                                      "web"])
    assert result.exit_code == EXIT_CONFIG
    assert "web.listen" in result.output


def test_user_commands(tmp_path: Path) -> None:
    base = ["--state-dir", str(tmp_path)]
    command = ["user", "add", "ann", "--role", "owner"]
    runner = CliRunner()
    assert runner.invoke(cli, [*base, *command, "--password-stdin"],
                         input="short\n").exit_code == 1
    added = runner.invoke(cli, [*base, *command, "--password-stdin"], input="long-enough-1\n")
    assert added.exit_code == 0, added.output
    assert runner.invoke(cli, [*base, *command, "--password-stdin"],
                         input="long-enough-1\n").exit_code == 1  # exists
    assert "ann" in runner.invoke(cli, [*base, "user", "list"]).output
    assert runner.invoke(cli, [*base, "user", "passwd", "ann", "--password-stdin"],
                         input="another-one-2\n").exit_code == 0
    assert runner.invoke(cli, [*base, "user", "remove", "ann"]).exit_code == 0
    assert runner.invoke(cli, [*base, "user", "remove", "ann"]).exit_code == 1
    users = (tmp_path / "web/users.json")
    assert users.stat().st_mode & 0o777 == 0o600
    assert "long-enough" not in users.read_text()
