"""The front panel's spoken sentences, in each language (built-in and added)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Config, load_config
from appliance.speech.prompts import health_sentence, last_call_sentence
from tests.languages.toy import MARKER, make_toy_language

#: A call at 14:05 local time (whatever the zone the tests run in).
RING_AT = time.mktime((2026, 3, 2, 14, 5, 0, 0, 0, -1))
CALL = {"reference": "42719353", "caller_number": "+3612345", "ring_at": RING_AT}


def config_for(tmp_path: Path, language: str, **speech: Any) -> Config:
    return load_config(Path("/dev/null"), state_dir=tmp_path / "state",
                       overrides={"device": {"language": language}, "speech": speech})


@pytest.mark.parametrize(("language", "sentence"), [
    ("hu", "Az utolsó hívás azonosítója: 4 2 7, 1 9 3, 5 3, hívó: 3 6 1 2 3 4 5, "
           "időpont: 14 óra 5 perc."),
    ("en", "The last call reference: 4 2 7, 1 9 3, 5 3, caller: 3 6 1 2 3 4 5, time: 14 05."),
])
def test_last_call_in_builtin_languages(tmp_path: Path, language: str, sentence: str) -> None:
    assert last_call_sentence(config_for(tmp_path, language), CALL) == sentence


def test_unknown_caller_and_no_call_yet(tmp_path: Path) -> None:
    hu = config_for(tmp_path, "hu")
    unknown = last_call_sentence(hu, {**CALL, "caller_number": None})
    assert "hívó: ismeretlen," in unknown
    assert last_call_sentence(hu, None) == "Még nem volt hívás."
    assert "caller: unknown," in last_call_sentence(config_for(tmp_path, "en"),
                                                    {**CALL, "caller_number": ""})


def test_added_language_speaks_its_own_words(tmp_path: Path) -> None:
    make_toy_language(tmp_path / "languages")
    config = config_for(tmp_path, "xx", languages_dir=str(tmp_path / "languages"))
    assert last_call_sentence(config, CALL) == (
        f"{MARKER} The last call reference: 4 2 7, 1 9 3, 5 3, caller: 3 6 1 2 3 4 5, "
        "time: 14 hours 5 minutes.")
    assert health_sentence(config, []) == f"{MARKER} The appliance is working normally."
    assert health_sentence(config, ["disk nearly full", "clock not synchronised"]) == (
        f"{MARKER} Fault: disk nearly full; clock not synchronised.")
