"""The call-recording telephone appliance for small shops.

The daemon's process environment (:data:`DAEMON_ENVIRONMENT`, set by
systemd/appliance.service and by the benchmark's daemon child) keeps its memory down
(docs/performance.md, "Pi-class budget, memory and load"):

* ``APPLIANCE_NO_OPENSSL=1``: OpenSSL (libcrypto + libssl, ≈ 5 MB of the daemon's RSS) is
  never loaded. The daemon has no network at all (``PrivateNetwork=yes``), so it speaks no TLS;
  its SHA-256 and HMAC come from CPython's own implementations. It must act before anything
  imports ``asyncio`` (which imports ``ssl``) or ``hashlib`` (which loads ``_hashlib``), so it
  lives here, in the first module any ``appliance`` process imports.
* ``OPENBLAS_NUM_THREADS=1``: numpy's OpenBLAS starts no worker threads (the daemon's matrix
  products are a few hundred samples; a Pi would otherwise get three idle threads).
* ``MALLOC_ARENA_MAX=1``: every thread (the event loop's, the recorder's, gpiozero's, the
  executor's) allocates from glibc's one main arena: no second arena beside it (≈ 0.7 MB of
  the peak). The loop thread is the only busy allocator, and glibc's per-thread
  cache serves small blocks without the arena's lock, so sharing costs no measurable CPU.
"""

from __future__ import annotations

import os as _os
import sys as _sys

__version__ = "0.1.0"

#: The switch that keeps OpenSSL out of the process (see the module docstring).
NO_OPENSSL_ENV = "APPLIANCE_NO_OPENSSL"
#: The daemon's environment; systemd/appliance.service sets the same (a test compares them).
DAEMON_ENVIRONMENT = {NO_OPENSSL_ENV: "1", "OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"}

if _os.environ.get(NO_OPENSSL_ENV) == "1":
    # None in sys.modules makes `import ssl` raise ImportError, which asyncio, hashlib, hmac
    # and secrets each handle by doing without (setdefault: an already loaded module stays).
    for _name in ("ssl", "_ssl", "_hashlib"):
        _sys.modules.setdefault(_name, None)  # type: ignore[arg-type]
