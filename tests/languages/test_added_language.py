"""A language added as a folder outside the package speaks a whole call through the daemon.

The toy language ``xx`` (tests/languages/toy.py) is written into a temporary directory named
by ``speech.languages_dir``; the demo runs the real daemon, the modem emulator on a pty and the
simulated shop. The call ends with its DB row, a playable recording, the recording LED's
history, prompts rendered in ``xx`` with its espeak-ng voice, and the owner's page's export
with its summary in ``xx`` first.
"""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

import pytest
import soundfile

from appliance.sim.demo import run_demo
from appliance.store.export import SUMMARY_NAME
from appliance.web import jobs
from tests.languages.toy import MARKER, make_toy_language

pytestmark = pytest.mark.timeout(150)

#: A short notice keeps the call quick (as tests/system/test_scenarios.py does).
TOY_TEXTS = {
    "notice": MARKER + " notice: {company} records this call. Not to be recorded, press "
              "{optout_key_phrase}.",
    "notice_details": MARKER + " details: we keep it for {retention}.",
}


async def test_call_in_a_language_from_languages_dir(tmp_path: Path) -> None:
    languages_dir = tmp_path / "languages"
    make_toy_language(languages_dir)
    state = tmp_path / "state"
    result = await run_demo("answered", state, config_extra={
        "device": {"language": "xx"},
        "speech": {"languages_dir": str(languages_dir), "texts": TOY_TEXTS}})
    summary = result.summary
    assert summary["outcome"] == "bridged"
    assert summary["recording_decision"] == "recorded"

    # The prompts were rendered in xx, by the espeak-ng voice its language.toml names.
    manifest = json.loads((state / "prompt-cache" / "library.xx.json").read_text("utf-8"))
    assert manifest["voice_id"] == "espeak-ng:en-us"
    assert manifest["notice_texts"]["notice"].startswith(f"{MARKER} notice: ")
    assert manifest["notice_texts"]["notice"].endswith("press nine.")
    assert manifest["notice_texts"]["notice_details"] == f"{MARKER} details: we keep it for " \
                                                         "five years."
    assert "goodbye" in manifest["clips"]

    # The DB row: the notice of the xx build was played.
    con = sqlite3.connect(summary["db_path"])
    con.row_factory = sqlite3.Row
    row = dict(con.execute("SELECT * FROM calls WHERE reference = ?",
                           (summary["reference_digits"],)).fetchone())
    con.close()
    assert row["notice_completed"] == 1
    assert row["notice_version"] == manifest["notice_version"]

    # A playable two-channel recording.
    info = soundfile.info(summary["recording_path"])
    assert (info.channels, info.samplerate) == (2, 8000)
    assert info.duration > 1.0

    # The recording LED was lit during the call and is off at the end.
    led = summary["pins"]["led_recording"]
    assert any(lit for _, lit in led)
    assert led[-1][1] is False

    # The owner's page hands it over: the summary speaks xx first, then Hungarian and English.
    reply = jobs.run({"cmd": "export", "db_path": summary["db_path"],
                      "recordings_dir": str(state / "recordings"),
                      "reference": summary["reference_digits"], "out_dir": str(tmp_path / "out"),
                      "actor": "web:owner", "reason": "caller asked", "device_language": "xx",
                      "languages_dir": str(languages_dir)})
    assert reply["ok"], reply
    with zipfile.ZipFile(reply["path"]) as package:
        name = next(n for n in package.namelist() if n.endswith(SUMMARY_NAME))
        text = package.read(name).decode("utf-8")
    assert text.startswith(f"{MARKER.upper()} CALL RECORD — reference: ")
    assert "HÍVÁS ADATAI" in text
    assert text.index("HÍVÁS ADATAI") < text.rindex("\nCALL RECORD")
