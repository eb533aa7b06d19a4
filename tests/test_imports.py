"""The package's import graph: no cycles, and the rooms import in one direction.

Every ``import`` counts, also those inside functions and under ``TYPE_CHECKING``: a cycle
that only shows up lazily or for the type checker is still two modules that each need
the other (docs/architecture.md, "Rooms").
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import appliance

PACKAGE_DIR = Path(appliance.__file__).parent
#: Rooms that drive hardware, compute audio, speak prompts or keep the records: they never
#: reach up into the call or daemon (the call reaches them through its ports).
LOWER_ROOMS = ("line", "handset", "panel", "audio", "speech", "store")
UPPER_ROOMS = ("daemon", "call", "cli", "sim", "bench")
#: Modules at the package top that every room may import: they import only one another.
SHARED_LEAVES = ("appliance.errors", "appliance.text", "appliance.reference", "appliance.files")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports (anywhere in its source)."""
    modules = {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t if t in modules else node.module for t in targets]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "appliance.daemon.app" in graph
    assert "appliance.line.modem" in graph["appliance.daemon.line_session"]


def test_no_import_cycles() -> None:
    graph = import_graph()
    # A package imports its own modules only to re-export them; that is not a dependency.
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not name.startswith(f"{t}.")}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' → '.join(exc.args[1])}") from None


def test_the_daemon_parts_never_import_its_wiring() -> None:
    # daemon/app.py wires the parts together; a part that reached back into it would tie
    # the parts to each other through it (they talk to it through Protocols instead).
    wrong = [
        f"{name} imports appliance.daemon.app"
        for name, targets in import_graph().items()
        if name.startswith("appliance.daemon.") and "appliance.daemon.app" in targets
    ]
    assert wrong == []


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_lower_rooms_never_import_upper_rooms() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if _room(name) in LOWER_ROOMS
        for target in targets
        if _room(target) in UPPER_ROOMS
    ]
    assert wrong == []


def test_shared_leaves_import_no_room() -> None:
    graph = import_graph()
    wrong = [f"{name} imports {target}" for name in SHARED_LEAVES
             for target in graph[name] if target not in SHARED_LEAVES]
    assert wrong == []


#: Rooms of the product proper: the emulator and the simulated world (``sim``) are reached
#: only through a modem URL or a pty, wired in by the command line (docs/architecture.md).
PRODUCTION_ROOMS = ("line", "handset", "panel", "audio", "call", "daemon", "store", "speech",
                    "archive", "web")


def test_the_product_never_imports_the_simulation() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if _room(name) in PRODUCTION_ROOMS
        for target in targets
        if _room(target) == "sim"
    ]
    assert wrong == []


#: Packages the daemon must not load at start: they serve a child process (speech rendering)
#: or a rare path only, and every module stays in the daemon's RSS (docs/performance.md).
DAEMON_NEVER_AT_START = ("scipy", "soxr", "piper", "onnxruntime", "sqlite_utils", "click",
                         "multiprocessing", "pandas", "uvicorn", "starlette", "appliance.sim")


def test_the_daemon_does_not_import_what_it_only_needs_elsewhere() -> None:
    import subprocess
    import sys

    code = ("import sys, appliance.daemon.app; "
            f"print(' '.join(m for m in {DAEMON_NEVER_AT_START!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE_DIR.parent)
    assert out.stdout.split() == []


def test_the_bench_daemon_child_carries_no_instruments() -> None:
    # Its RSS is the daemon_rss figure: the emulator and the probes live in the bench process.
    import subprocess
    import sys

    code = ("import sys, appliance.bench.worker; print(' '.join(m for m in "
            "('appliance.sim.modem.emulator', 'appliance.bench.probes', 'appliance.bench.calls') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE_DIR.parent)
    assert out.stdout.split() == []


def test_the_daemon_environment_keeps_openssl_out_and_still_hashes() -> None:
    # appliance/__init__.py: the daemon (no network) runs without libcrypto/libssl (≈ 5 MB).
    import os
    import subprocess
    import sys

    from appliance import DAEMON_ENVIRONMENT

    code = ("import sys, appliance.daemon.app, appliance.store.recorder, hashlib, hmac; "
            "maps = open('/proc/self/maps').read(); "
            "print(' '.join(m for m in ('ssl', '_ssl', '_hashlib') if sys.modules.get(m)), "
            "'libcrypto' in maps, hashlib.sha256(b'abc').hexdigest()[:8], "
            "hmac.digest(b'k', b'm', hashlib.sha256).hex()[:8])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE_DIR.parent,
                         env={**os.environ, **DAEMON_ENVIRONMENT})
    assert out.stdout.split() == ["False", "ba7816bf", "b60090e3"]


def test_the_systemd_unit_sets_the_daemon_environment() -> None:
    from appliance import DAEMON_ENVIRONMENT

    unit = (PACKAGE_DIR.parent / "systemd" / "appliance.service").read_text(encoding="utf-8")
    assigned = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            for pair in line.removeprefix("Environment=").split():
                key, _, value = pair.partition("=")
                assigned[key] = value
    assert {k: assigned.get(k) for k in DAEMON_ENVIRONMENT} == DAEMON_ENVIRONMENT
