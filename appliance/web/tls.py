"""The page's TLS certificate: made once at install, its fingerprint shown for comparison.

A shop has no domain and no certificate authority; the box makes a self-signed certificate
for ``<hostname>.local`` (and its addresses) with ``openssl`` (in every Debian) at install.
The browser warns once; the owner compares the SHA-256 fingerprint the browser shows with the
one on the page's footer, ``appliance status`` and ``appliance doctor`` print
(docs/web.md "HTTPS").
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Final

CERT_NAME: Final = "tls.crt"
KEY_NAME: Final = "tls.key"
CERT_DAYS: Final = 3650
KEY_FILE_MODE: Final = 0o600
CERT_FILE_MODE: Final = 0o644


def cert_paths(web_dir: Path) -> tuple[Path, Path]:
    """``(certificate, key)`` in the web directory."""
    return Path(web_dir) / CERT_NAME, Path(web_dir) / KEY_NAME


def fingerprint(cert: Path) -> str | None:
    """SHA-256 of the certificate (DER), as browsers show it (``AB:CD:…``); None if absent.

    Raises:
        ValueError: the file is not a PEM certificate.
    """
    try:
        pem = Path(cert).read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def make_certificate(web_dir: Path, *, hostname: str | None = None,
                     force: bool = False) -> tuple[Path, bool]:
    """Make a self-signed P-256 certificate for ``<hostname>.local`` unless one exists.

    Args:
        web_dir: where ``tls.crt`` (0644) and ``tls.key`` (0600) go.
        hostname: default: this machine's host name.
        force: replace an existing certificate.

    Returns:
        ``(certificate path, made)`` — made is False when one existed.

    Raises:
        RuntimeError: openssl is missing or failed.
    """
    cert, key = cert_paths(web_dir)
    if cert.exists() and key.exists() and not force:
        return cert, False
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is not installed (sudo apt-get install openssl)")
    host = (hostname or socket.gethostname()).split(".")[0] or "appliance"
    names = [f"DNS:{host}.local", f"DNS:{host}", "DNS:localhost", "IP:127.0.0.1"]
    Path(web_dir).mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp_key = key.with_name(key.name + ".tmp")
    tmp_cert = cert.with_name(cert.name + ".tmp")
    # The key is created 0600 before openssl writes into it.
    os.close(os.open(tmp_key, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, KEY_FILE_MODE))
    done = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", str(CERT_DAYS), "-subj", f"/CN={host}.local/O=appliance",
         "-addext", "subjectAltName=" + ",".join(names),
         "-keyout", str(tmp_key), "-out", str(tmp_cert)],
        capture_output=True, text=True, check=False)
    if done.returncode != 0:
        for p in (tmp_key, tmp_cert):
            p.unlink(missing_ok=True)
        raise RuntimeError(f"openssl failed: {done.stderr.strip()[-300:]}")
    os.chmod(tmp_cert, CERT_FILE_MODE)
    os.replace(tmp_key, key)
    os.replace(tmp_cert, cert)
    return cert, True
