"""The page's words in Hungarian and English (the configured language first, switchable).

One table, key → (hu, en); a missing key is a bug the tests catch (every key used by a
template is looked up through :func:`translator`, which raises on an unknown key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

#: The page's languages: the columns of the word table below. The prompts' languages are
#: another list (appliance/languages/, docs/languages.md); a device speaking one the page lacks
#: shows the page in English.
PAGE_LANGUAGES: Final = ("hu", "en")

_WORDS: Final[dict[str, tuple[str, str]]] = {
    "app_title": ("Hívásrögzítő", "Call recorder"),
    "calls": ("Hívások", "Calls"),
    "status": ("Állapot", "Status"),
    "health": ("Ellenőrzés", "Health"),
    "audit": ("Napló", "Audit"),
    "logs": ("Rendszernapló", "Logs"),
    "logout": ("Kijelentkezés", "Log out"),
    "login": ("Bejelentkezés", "Log in"),
    "account": ("Felhasználó", "Account"),
    "password": ("Jelszó", "Password"),
    "login_failed": ("Hibás név vagy jelszó.", "Wrong name or password."),
    "login_locked": ("Túl sok hibás próbálkozás; próbálja később.",
                     "Too many failed attempts; try again later."),
    "login_no_index": ("A rögzítő még nem indult el; próbálja egy perc múlva.",
                       "The recorder has not started yet; try again in a minute."),
    "signed_in_as": ("Bejelentkezve:", "Signed in as"),
    "search": ("Keresés", "Search"),
    "search_hint": ("Hívásazonosító vagy telefonszám", "Call reference or phone number"),
    "from": ("Ettől", "From"),
    "to": ("Eddig", "To"),
    "outcome": ("Kimenetel", "Outcome"),
    "line": ("Vonal", "Line"),
    "any": ("mind", "any"),
    "reference": ("Azonosító", "Reference"),
    "when": ("Időpont", "When"),
    "caller": ("Hívó", "Caller"),
    "caller_name": ("Hívó neve", "Caller name"),
    "recording": ("Felvétel", "Recording"),
    "duration": ("Hossz", "Length"),
    "no_calls": ("Nincs találat.", "No calls found."),
    "newer": ("← Újabbak", "← Newer"),
    "older": ("Régebbiek →", "Older →"),
    "page": ("oldal", "page"),
    "not_reference": ("Ez nem érvényes hívásazonosító", "This is not a valid call reference"),
    "did_you_mean": ("Erre gondolt?", "Did you mean"),
    "check_digit_wrong": ("az ellenőrző számjegy nem stimmel (elírás?)",
                          "the check digit is wrong (a typo?)"),
    "wrong_digit_count": ("a hívásazonosító 8 számjegyből áll",
                          "a call reference has 8 digits"),
    "unknown_caller": ("ismeretlen", "unknown"),
    "withheld": ("rejtett", "withheld"),
    "erased": ("törölve", "erased"),
    "purged": ("lejárt, törölve", "expired, deleted"),
    "call": ("Hívás", "Call"),
    "timeline": ("Események", "Timeline"),
    "notice_proof": ("Tájékoztatás igazolása", "Notice proof"),
    "notice_completed": ("A hívó végighallgatta a tájékoztatást",
                         "The caller heard the whole notice"),
    "notice_not_completed": ("A tájékoztatás nem hangzott el teljesen",
                             "The notice was not played to the end"),
    "notice_version": ("Tájékoztatás változata", "Notice version"),
    "notice_form": ("Tájékoztatás formája", "Form of the notice"),
    "notice_layer": ("Elhangzott", "What was said"),
    "notice_played": ("Lejátszva", "Played"),
    "recording_decision": ("Rögzítés", "Recording decision"),
    "listen": ("Meghallgatás", "Listen"),
    "channels_hint": ("Mindkét fél hallható: bal csatorna a hívó, jobb az üzlet.",
                      "Both sides play: the left channel is the caller, the right the shop."),
    "download": ("Letöltés (eredeti fájl)", "Download (original file)"),
    "sha256": ("SHA-256", "SHA-256"),
    "no_audio": ("Ehhez a híváshoz nincs meghallgatható felvétel.",
                 "There is no recording to play for this call."),
    "handover": ("Átadás a hívónak", "Hand over to the caller"),
    "handover_help": ("ZIP-csomag: a felvétel WAV-ként és eredetiben, adatok, igazolás, "
                      "összefoglaló. Az átadás okát naplózzuk.",
                      "A ZIP package: the recording as WAV and original, data, proof and a "
                      "summary. The reason is recorded in the audit trail."),
    "reason": ("Indok", "Reason"),
    "reason_hint": ("pl. a hívó kérése, 2024-05-02 (személyes adat nélkül)",
                    "e.g. caller's request of 2024-05-02 (no personal data)"),
    "reason_needed": ("Adja meg az indokot.", "Give a reason."),
    "make_package": ("Csomag letöltése", "Download the package"),
    "erase": ("Törlés", "Erase"),
    "erase_help": ("Végleges: a felvétel és a hívó adatai törlődnek; az azonosító, az időpont "
                   "és a kimenetel igazolásként megmarad.",
                   "Irreversible: the recording and the caller's data go; the reference, times "
                   "and outcome stay as proof."),
    "erase_confirm": ("Megerősítésül írja be a hívásazonosítót",
                      "To confirm, type the call reference"),
    "erase_confirm_wrong": ("A megerősítő azonosító nem egyezik.",
                            "The confirmation does not match the reference."),
    "erase_button": ("Végleges törlés", "Erase for good"),
    "erased_done": ("A hívást töröltük; az igazoló sor megmaradt.",
                    "The call was erased; its tombstone remains."),
    "erased_at": ("Törölve", "Erased"),
    "erase_reason": ("Törlés oka", "Reason for erasure"),
    "failed": ("Nem sikerült", "Failed"),
    "forbidden": ("Ehhez a szerepköréhez nincs jogosultság.",
                  "Your role does not allow this."),
    "not_found": ("Nincs ilyen oldal vagy hívás.", "No such page or call."),
    "bad_form": ("Az űrlap lejárt; töltse be újra az oldalt.",
                 "The form has expired; reload the page."),
    "daemon_down": ("A rögzítő nem fut.", "The recorder is not running."),
    "lines": ("Vonalak", "Lines"),
    "call_in_progress": ("Folyamatban lévő hívás", "Call in progress"),
    "no_call": ("nincs hívás", "no call"),
    "leds": ("Jelzőfények", "LEDs"),
    "faults": ("Hibák", "Faults"),
    "no_faults": ("nincs", "none"),
    "disk": ("Tárhely", "Disk"),
    "disk_left": ("szabad, kb. ennyi óra felvételre:", "free, hours of recording left:"),
    "handset": ("Kézibeszélő", "Handset"),
    "off_hook": ("felvéve", "off hook"),
    "on_hook": ("letéve", "on hook"),
    "last_call": ("Utolsó hívás", "Last call"),
    "updated": ("frissítve", "updated"),
    "check": ("Ellenőrzés", "Check"),
    "result": ("Eredmény", "Result"),
    "fix": ("Teendő", "Fix"),
    "verify": ("Lánc ellenőrzése", "Verify the chain"),
    "chain_intact": ("A napló lánca ép", "The audit chain is intact"),
    "chain_broken": ("A napló lánca SÉRÜLT", "The audit chain is BROKEN"),
    "entries": ("bejegyzés", "entries"),
    "action": ("Művelet", "Action"),
    "actor": ("Ki", "Who"),
    "details": ("Részletek", "Details"),
    "journal_unavailable": ("A rendszernapló nem érhető el ezen a gépen.",
                            "The system journal is not available on this machine."),
    "fingerprint": ("Tanúsítvány ujjlenyomata (SHA-256)", "Certificate fingerprint (SHA-256)"),
    "plain_http": ("helyi HTTP (csak erről a gépről)", "local HTTP (this machine only)"),
    "language": ("English", "Magyar"),
    "yes": ("igen", "yes"),
    "no": ("nem", "no"),
    "out_bridged": ("fogadott", "answered"),
    "out_voicemail": ("hangüzenet", "voicemail"),
    "out_abandoned": ("letette a tájékoztatás alatt", "hung up during the notice"),
    "out_missed": ("nem fogadott", "missed"),
    "out_error": ("hiba", "error"),
    "out_interrupted": ("megszakadt", "interrupted"),
    "out_in_progress": ("folyamatban", "in progress"),
    "out_unknown": ("nem ismert (helyreállított)", "unknown (rebuilt)"),
    "dec_recorded": ("rögzítve", "recorded"),
    "dec_declined": ("a hívó elutasította", "declined by the caller"),
    "dec_failed": ("sikertelen", "failed"),
    "dec_none": ("nincs", "none"),
    "dec_pending": ("folyamatban", "pending"),
}


def value_words(t: Callable[[str], str]) -> Callable[[str, object], str]:
    """``tv(prefix, value)``: the word for a stored value (an outcome, a decision), or the
    value itself when a newer schema stores one this table does not know yet."""

    def tv(prefix: str, value: object) -> str:
        try:
            return t(f"{prefix}{value}")
        except KeyError:
            return str(value)

    return tv


def translator(language: str) -> Callable[[str], str]:
    """Return ``t(key)`` for ``language`` (one of :data:`PAGE_LANGUAGES`; any other gets
    English).

    Raises:
        KeyError: from ``t`` for a key the table lacks.
    """
    column = PAGE_LANGUAGES.index(language if language in PAGE_LANGUAGES else "en")

    def t(key: str) -> str:
        return _WORDS[key][column]

    return t
