"""Prompt texts, notice filling and Hungarian/English inflection."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import ConfigError
from appliance.languages.en.grammar import duration as en_duration
from appliance.languages.en.grammar import key_phrase as en_key_phrase
from appliance.languages.en.grammar import number_words as en_number_words
from appliance.languages.hu.grammar import article as hu_article
from appliance.languages.hu.grammar import duration as hu_duration
from appliance.languages.hu.grammar import key_accusative as hu_key_phrase
from appliance.languages.hu.grammar import key_name as hu_key_name
from appliance.languages.hu.grammar import key_word as hu_key_word
from appliance.languages.hu.grammar import number_words as hu_number_words
from appliance.speech.prompts import PROMPT_NAMES, load_prompt_texts, render_notice_texts

HU_PURPOSE = "minőségbiztosítás és panaszkezelés"


def render_notice_text(texts: dict[str, str], **values: object) -> str:
    """All three layers filled from ``values`` (defaults for the rest), joined."""
    defaults: dict[str, object] = {"legal_basis": "jogos érdek", "full_notice_at": "üzletünkben",
                                   "details_key": "0"}
    layers = render_notice_texts(texts, **{**defaults, **values})  # type: ignore[arg-type]
    return " ".join(layers[name] for name in ("notice", "notice_details", "notice_short"))


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "nulla"),
        (1, "egy"),
        (2, "kettő"),
        (9, "kilenc"),
        (10, "tíz"),
        (11, "tizenegy"),
        (12, "tizenkettő"),
        (20, "húsz"),
        (21, "huszonegy"),
        (22, "huszonkettő"),
        (30, "harminc"),
        (45, "negyvenöt"),
        (90, "kilencven"),
        (100, "száz"),
        (102, "százkettő"),
        (200, "kétszáz"),
        (365, "háromszázhatvanöt"),
        (1000, "ezer"),
        (1001, "ezeregy"),
        (1999, "ezerkilencszázkilencvenkilenc"),
        (2000, "kétezer"),
        (2001, "kétezer-egy"),
        (2022, "kétezer-huszonkettő"),
        (2025, "kétezer-huszonöt"),
        (2200, "kétezer-kétszáz"),
        (9999, "kilencezer-kilencszázkilencvenkilenc"),
    ],
)
def test_hu_number_words(n: int, words: str) -> None:
    assert hu_number_words(n) == words


@pytest.mark.parametrize(
    ("n", "words"),
    [(2, "két"), (22, "huszonkét"), (12, "tizenkét"), (2002, "kétezer-két"), (5, "öt")],
)
def test_hu_number_words_attributive(n: int, words: str) -> None:
    assert hu_number_words(n, attributive=True) == words


@given(st.integers(min_value=0, max_value=9999))
def test_hu_number_words_well_formed(n: int) -> None:
    words = hu_number_words(n)
    # "egyezer"/"egyszáz" and "kettőszáz"/"kettőezer" are never written; hyphen only above 2000.
    assert not words.startswith(("egyezer", "egyszáz"))
    assert "kettősz" not in words
    assert "kettőe" not in words
    assert ("-" in words) == (n > 2000 and n % 1000 != 0)
    assert words.replace("-", "").isalpha()


@pytest.mark.parametrize("n", [-1, 10000])
def test_hu_number_words_out_of_range(n: int) -> None:
    with pytest.raises(ValueError, match=r"0\.\.9999"):
        hu_number_words(n)


@pytest.mark.parametrize(
    ("days", "phrase"),
    [
        (1825, "öt évig"),
        (365, "egy évig"),
        (730, "két évig"),
        (90, "három hónapig"),
        (60, "két hónapig"),
        (360, "tizenkét hónapig"),
        (45, "negyvenöt napig"),
        (92, "kilencvenkét napig"),
        (1, "egy napig"),
    ],
)
def test_hu_duration(days: int, phrase: str) -> None:
    assert hu_duration(days) == phrase


def test_hu_duration_90_days_as_days_when_not_month_multiple() -> None:
    # 90 days is three 30-day months; 91 days stays in days.
    assert hu_duration(91) == "kilencvenegy napig"


@pytest.mark.parametrize(
    ("key", "phrase"),
    [
        ("9", "kilences gombot"),
        ("1", "egyes gombot"),
        ("5", "ötös gombot"),
        ("3", "hármas gombot"),
        ("0", "nullás gombot"),
        ("*", "csillag gombot"),
        ("#", "kettőskereszt gombot"),
    ],
)
def test_hu_key_phrase(key: str, phrase: str) -> None:
    assert hu_key_phrase(key) == phrase


def test_key_phrase_rejects_non_keys() -> None:
    with pytest.raises(ValueError, match="telephone key"):
        hu_key_phrase("A")
    with pytest.raises(ValueError, match="telephone key"):
        en_key_phrase("99")


def test_hu_article() -> None:
    assert hu_article("egyes") == "az"
    assert hu_article("Ötös") == "az"
    assert hu_article("kilences") == "a"


@pytest.mark.parametrize(
    ("n", "words"),
    [(0, "zero"), (13, "thirteen"), (42, "forty-two"), (100, "one hundred"),
     (2025, "two thousand and twenty-five"), (1999, "one thousand nine hundred and ninety-nine")],
)  # fmt: skip
def test_en_number_words(n: int, words: str) -> None:
    assert en_number_words(n) == words


@pytest.mark.parametrize(
    ("days", "phrase"),
    [(1825, "five years"), (365, "one year"), (90, "three months"), (30, "one month"),
     (45, "forty-five days")],
)  # fmt: skip
def test_en_duration(days: int, phrase: str) -> None:
    assert en_duration(days) == phrase


@pytest.mark.parametrize(
    ("key", "phrase"), [("9", "nine"), ("0", "zero"), ("*", "star"), ("#", "hash")]
)
def test_en_key_phrase(key: str, phrase: str) -> None:
    assert en_key_phrase(key) == phrase


@pytest.mark.parametrize("lang", ["hu", "en"])
def test_texts_define_exactly_the_prompt_names(lang: str) -> None:
    texts = load_prompt_texts(lang)
    assert set(texts) == PROMPT_NAMES
    assert all(text.strip() for text in texts.values())


def test_hungarian_fixed_texts() -> None:
    texts = load_prompt_texts("hu")
    assert texts["reference_intro"] == "Azonosító:"
    assert texts["optout_confirm"] == "Rendben, ezt a hívást nem rögzítjük."
    assert texts["whisper_notice"] == "A hívó még a tájékoztatót hallja."
    assert texts["last_call"].format(reference="1", caller="2", time="3") == (
        "Az utolsó hívás azonosítója: 1, hívó: 2, időpont: 3."
    )


def test_override_replaces_text() -> None:
    texts = load_prompt_texts("hu", {"goodbye": "Viszlát!"})
    assert texts["goodbye"] == "Viszlát!"
    assert load_prompt_texts("hu")["goodbye"] != "Viszlát!"


def test_unknown_override_names_the_config_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_prompt_texts("hu", {"gooodbye": "x"})
    assert info.value.key == "speech.texts.gooodbye"


def test_empty_override_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load_prompt_texts("en", {"goodbye": "  "})
    assert info.value.key == "speech.texts.goodbye"


def test_unknown_language() -> None:
    with pytest.raises(ConfigError) as info:
        load_prompt_texts("de")
    assert info.value.key == "speech.language"


def test_hungarian_notice_filled_from_config() -> None:
    text = render_notice_text(
        load_prompt_texts("hu"),
        lang="hu",
        company="Alfa Kft.",
        purpose=HU_PURPOSE,
        retention_days=1825,
        optout_key="1",
    )
    assert "Alfa Kft., " in text
    assert "öt évig" in text
    assert "nyomja meg az egyes gombot" in text
    assert "Ne rögzítsük? egyes gomb." in text
    assert "Jogai: nullás gomb, vagy üzletünkben" in text
    assert HU_PURPOSE in text
    assert "jogos érdek" in text
    assert "Nemzeti Adatvédelmi és Információszabadság Hatóság" in text
    assert "{" not in text


def test_hungarian_notice_article_follows_company() -> None:
    text = render_notice_text(
        load_prompt_texts("hu"),
        lang="hu",
        company="Kovács Bt.",
        purpose=HU_PURPOSE,
        retention_days=90,
        optout_key="9",
    )
    assert "Kovács Bt., " in text
    assert "három hónapig" in text
    assert "a kilences gombot" in text


def test_english_notice_filled_from_config() -> None:
    text = render_notice_text(
        load_prompt_texts("en"),
        lang="en",
        company="Alpha Ltd",
        purpose="quality and complaint handling",
        retention_days=90,
        optout_key="#",
    )
    assert "Alpha Ltd" in text
    assert "three months" in text
    assert "press hash" in text
    assert "press zero" in text
    assert "NAIH" in text


def test_notice_rejects_bad_key_and_retention() -> None:
    texts = load_prompt_texts("en")
    common = {"lang": "en", "company": "A", "purpose": "p"}
    with pytest.raises(ConfigError) as info:
        render_notice_text(texts, **common, retention_days=30, optout_key="x")
    assert info.value.key == "optout_key"
    with pytest.raises(ConfigError) as info:
        render_notice_text(texts, **common, retention_days=0, optout_key="9")
    assert info.value.key == "retention_days"


def test_notice_override_with_unknown_placeholder() -> None:
    texts = load_prompt_texts("en", {"notice_details": "Hello {shop}"})
    with pytest.raises(ConfigError) as info:
        render_notice_text(
            texts, lang="en", company="A", purpose="p", retention_days=30, optout_key="9"
        )
    assert info.value.key == "speech.texts.notice_details"


def test_layers_are_filled_separately() -> None:
    layers = render_notice_texts(
        load_prompt_texts("hu"), lang="hu", company="Példa Bolt", purpose="panaszkezelés",
        legal_basis="jogos érdek", full_notice_at="üzletünkben", retention_days=1825,
        optout_key="9", details_key="0")
    assert layers["notice"] == ("Példa Bolt, panaszkezelés céljából rögzítjük a hívást. Jogai: "
                                "nullás gomb, vagy üzletünkben. Ne rögzítsük? kilences gomb.")
    # Only the second layer has the legal basis, retention and the NAIH complaint.
    for word in ("jogos érdek", "öt évig", "Hatóság"):
        assert word in layers["notice_details"]
        assert word not in layers["notice"]
    assert "Példa Bolt" not in layers["notice_short"]
    # The returning caller heard the keys named in full; the short form names them in a word.
    assert layers["notice_short"] == "Rögzítjük, nélküle kilences, részletek nullás."


def test_details_key_must_be_a_key() -> None:
    with pytest.raises(ConfigError) as info:
        render_notice_text(load_prompt_texts("hu"), lang="hu", company="A", purpose="p",
                           retention_days=30, optout_key="9", details_key="x")
    assert info.value.key == "details_key"


@pytest.mark.parametrize(("key", "name"), [("0", "nullás gomb"), ("*", "csillag gomb"),
                                           ("3", "hármas gomb")])
def test_hu_key_name(key: str, name: str) -> None:
    assert hu_key_name(key) == name


@pytest.mark.parametrize(("key", "word"), [("9", "kilences"), ("0", "nullás"),
                                           ("#", "kettőskereszt")])
def test_hu_key_word(key: str, word: str) -> None:
    assert hu_key_word(key) == word
    with pytest.raises(ValueError, match="telephone key"):
        hu_key_word("10")
