"""Hand-over, erase and the audit chain's verification for the owner's page, run in a child
process (``python -m …``).

The page itself must stay small (docs/performance.md: ≤ 50 MB RSS) and the export needs the
audio stack (FLAC → WAV through soundfile and numpy); so each hand-over or erase is one short
child process that calls the store's own code — :func:`appliance.store.export.export_call`
and :func:`appliance.store.retention.erase_call`, the same as ``appliance export``/``erase`` —
and exits, giving its memory back. Verifying the chain reads every audit row (10^6 and more
on a busy box): that memory, too, is the child's.

Protocol: one JSON object on stdin, one on stdout (``{"ok": true, …}`` or ``{"ok": false,
"error": "…"}``); exit status 0 either way (a non-zero status means the job itself crashed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

#: Audit action of a hand-over (with its reason); the export writes its own ``export`` entry.
HANDOVER_ACTION: Final = "handover"


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Do one job; return the reply.

    Request keys: ``cmd`` (``export``, ``erase`` or ``verify-audit``), ``db_path``,
    ``recordings_dir``; for export and erase ``reference`` (canonical digits), ``reason``,
    ``actor``; for ``export`` also ``out_dir``, ``account`` and ``client``, and optionally
    ``device_language`` and ``languages_dir`` (the summary's languages, as the CLI chooses).
    """
    from appliance.errors import StoreError
    from appliance.store.db import Store

    cmd = request.get("cmd")
    store = Store.open(Path(request["db_path"]), check=False)
    try:
        recordings = Path(request["recordings_dir"])
        reference = str(request.get("reference", ""))
        if cmd == "export":
            from appliance.languages.registry import registry
            from appliance.store.export import export_call, summary_languages

            if store.get_call(reference) is None:
                return {"ok": False, "error": f"no call with reference {reference}"}
            # The reason first, so the package's proof.json carries it with the export entry.
            store.append_audit_sync(HANDOVER_ACTION, actor=request["actor"],
                                    reference=reference,
                                    details={"reason": request["reason"],
                                             "account": request.get("account"),
                                             "client": request.get("client")})
            summary = summary_languages(registry(request.get("languages_dir", "")),
                                        request.get("device_language", ""))
            result = export_call(store, recordings, reference, Path(request["out_dir"]),
                                 actor=request["actor"], as_zip=True, summary=summary)
            return {"ok": True, "path": str(result.path), "files": list(result.files),
                    "problems": list(result.problems)}
        if cmd == "erase":
            from appliance.store.retention import erase_call

            result_e = erase_call(store, recordings, reference, reason=request["reason"],
                                  actor=request["actor"])
            return {"ok": True, "files_deleted": len(result_e.files_deleted)}
        if cmd == "verify-audit":
            problems = store.verify_audit_chain()
            return {"ok": True, "problems": problems}
        return {"ok": False, "error": f"unknown job {cmd!r}"}
    except (StoreError, ValueError, OSError) as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        store.close_sync()


def main() -> None:
    """Read the request from stdin, write the reply to stdout."""
    try:
        request = json.loads(sys.stdin.read())
        reply = run(request)
    except (ValueError, KeyError, TypeError) as exc:
        reply = {"ok": False, "error": f"bad job request: {exc}"}
    sys.stdout.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
