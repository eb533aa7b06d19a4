"""The language registry: built-in languages, their checks, and a language added from outside."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from appliance.config import LANGUAGES, load_config
from appliance.errors import ConfigError
from appliance.languages.en import grammar as en
from appliance.languages.hu import grammar as hu
from appliance.languages.registry import PROMPT_NAMES, builtin, registry
from appliance.speech.prompts import digit_word, load_prompt_texts, render_notice_texts
from appliance.speech.tts import EspeakEngine
from tests.languages.toy import MARKER, make_toy_language
from tests.policies import default_config


def _sha256(words: list[str]) -> str:
    return hashlib.sha256("\n".join(words).encode()).hexdigest()


def test_builtin_languages_default_first() -> None:
    assert builtin().codes == LANGUAGES == ("hu", "en")
    assert builtin().get("en").espeak_voice == "en-us"
    assert set(builtin().get("hu").texts) == PROMPT_NAMES


def test_grammar_output_unchanged_by_the_move() -> None:
    """SHA-256 of every number, attributive number and retention the speech module said before
    the inflection moved into the language folders (0..9999, 1..9998 days)."""
    assert _sha256([hu.number_words(n) for n in range(10000)]
                   + [hu.number_words(n, attributive=True) for n in range(10000)]) == (
        "7dc374043b1655f434e0ce7d57f2a761d8dc1f04c17698ca3f0c31b1dcc02432")
    assert _sha256([en.number_words(n) for n in range(10000)]) == (
        "bae1e09979c25b733af3c9d44c18184c5d81142f6b8124be0c41be9f2da0a9a6")
    assert _sha256([hu.duration(n) for n in range(1, 9999)]) == (
        "c7d3c21f878982c955e070f8300b99df78e6e86d972728976e909e32895e4ed9")
    assert _sha256([en.duration(n) for n in range(1, 9999)]) == (
        "21ca65d2a2682ab3e42b1e786a642c4f9d0057668510f8c51d08094f4f6ff3ff")


def test_unknown_language_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"speech\.language: expected one of hu, en"):
        load_prompt_texts("xx")


def test_added_language_speaks_through_the_same_functions(tmp_path: Path) -> None:
    make_toy_language(tmp_path)
    languages = registry(tmp_path)
    assert languages.codes == ("hu", "en", "xx")
    texts = load_prompt_texts("xx", languages=languages)
    assert texts["goodbye"] == f"{MARKER} Thank you for calling, goodbye."
    notice = render_notice_texts(texts, lang="xx", company="Acme", purpose="quality",
                                 legal_basis="legitimate interest", full_notice_at="in the shop",
                                 retention_days=730, optout_key="9", details_key="0",
                                 languages=languages)
    assert "two years" in notice["notice_details"]
    assert digit_word("xx", "7", languages) == "seven"
    assert languages.get("xx").grammar.spoken_time(9, 5) == "9 hours 5 minutes"
    espeak = EspeakEngine("xx", default_config().speech.espeak_wpm, languages=languages)
    assert espeak.voice_id == "espeak-ng:en-us"


def test_config_accepts_an_added_language(tmp_path: Path) -> None:
    make_toy_language(tmp_path / "languages")
    path = tmp_path / "config.toml"
    path.write_text(f'[device]\nlanguage = "xx"\n[speech]\nlanguages_dir = '
                    f'"{tmp_path / "languages"}"\n', encoding="utf-8")
    assert load_config(path, state_dir=tmp_path).device.language == "xx"
    path.write_text('[device]\nlanguage = "xx"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"device\.language"):
        load_config(path, state_dir=tmp_path)


def test_missing_text_names_language_file_and_key(tmp_path: Path) -> None:
    folder = make_toy_language(tmp_path)
    prompts = folder / "prompts.toml"
    prompts.write_text("\n".join(line for line in prompts.read_text("utf-8").splitlines()
                                 if not line.startswith("goodbye =")), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        registry(tmp_path)
    assert str(caught.value) == (
        f"language 'xx' ({prompts}) [texts] goodbye: expected a non-empty prompt text, "
        "found 'missing'")


def test_missing_export_word_names_language_and_key(tmp_path: Path) -> None:
    folder = make_toy_language(tmp_path)
    language = folder / "language.toml"
    language.write_text(language.read_text("utf-8").replace('missed = "missed call"\n', ""),
                        encoding="utf-8")
    with pytest.raises(ConfigError, match=r"language 'xx' .*language\.toml\) \[export\.outcomes\] "
                                          r"missed"):
        registry(tmp_path)


def test_missing_grammar_function_is_named(tmp_path: Path) -> None:
    folder = make_toy_language(tmp_path)
    (folder / "grammar.py").write_text("def number_words(n: int) -> str:\n    return ''\n",
                                       encoding="utf-8")
    with pytest.raises(ConfigError, match=r"language 'xx' .*grammar\.py\) digit_word\(\)"):
        registry(tmp_path)


def test_broken_grammar_module_is_a_config_error(tmp_path: Path) -> None:
    folder = make_toy_language(tmp_path)
    (folder / "grammar.py").write_text("raise RuntimeError('translator typo')\n",
                                       encoding="utf-8")
    with pytest.raises(ConfigError, match="translator typo"):
        registry(tmp_path)


def test_builtin_code_cannot_be_replaced(tmp_path: Path) -> None:
    make_toy_language(tmp_path, code="hu")
    with pytest.raises(ConfigError, match="not built in"):
        registry(tmp_path)


def test_folder_name_must_be_a_code(tmp_path: Path) -> None:
    make_toy_language(tmp_path, code="Not A Code")
    with pytest.raises(ConfigError, match="language code"):
        registry(tmp_path)


def test_languages_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"speech\.languages_dir"):
        registry(tmp_path / "nowhere")


def test_summary_languages_put_another_device_language_first(tmp_path: Path) -> None:
    from appliance.store.export import summary_languages

    make_toy_language(tmp_path)
    codes = [language.code for language in summary_languages(registry(tmp_path), "xx")]
    assert codes == ["xx", "hu", "en"]
    assert [language.code for language in summary_languages(builtin(), "en")] == ["hu", "en"]


def test_regional_code_loads(tmp_path: Path) -> None:
    make_toy_language(tmp_path, code="xx-yy")
    assert registry(tmp_path).get("xx-yy").grammar.digit_word("0") == "zero"


def test_builtin_folders_ship_as_packages() -> None:
    """setuptools packages a folder's grammar.py only with an ``__init__.py`` beside it (and
    mypy tells the folders' grammar modules apart by it)."""
    for language in builtin():
        assert (language.directory / "__init__.py").is_file(), language.code
