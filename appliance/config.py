"""Configuration: TOML over packaged defaults, loaded into frozen dataclasses.

``appliance/defaults.toml`` is the one source of every default: the dataclasses below have
no field defaults, and the loader fills each field from the packaged defaults merged with the
user's file (a ``[[lines]]`` table over the defaults' ``[line_defaults]``), so a key missing
from both is an error, never a silent second default (tests/test_config.py checks this).

Contract: :func:`load_config` either returns a fully validated :class:`Config` or raises
:class:`~appliance.errors.ConfigError` naming the key's dotted path, what was expected and what
was found. Unknown keys are errors (a typo must never silently fall back to a default). The CLI
turns a ConfigError into exit code 78 (``EX_CONFIG`` from sysexits.h, which systemd knows).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from appliance.errors import ConfigError
from appliance.languages.registry import builtin as builtin_languages
from appliance.languages.registry import for_config as languages_for
from appliance.line.commands import FORMAT_NAMES

#: sysexits.h EX_CONFIG: "something was found in an unconfigured or misconfigured state".
EXIT_CONFIG: Final = 78

DEFAULT_CONFIG_PATH: Final = Path("/etc/appliance/config.toml")
ENV_CONFIG: Final = "APPLIANCE_CONFIG"
ENV_STATE_DIR: Final = "APPLIANCE_STATE_DIR"

#: The built-in languages (appliance/languages/, docs/languages.md); Hungarian is the default.
#: ``speech.languages_dir`` may add more, so validation asks ``languages_for(config)``.
LANGUAGES: Final[tuple[str, ...]] = builtin_languages().codes
CODECS: Final = ("flac", "opus", "wav")
DTMF_KEYS: Final = tuple("0123456789*#")
#: Where plain HTTP may listen (web.tls = false): the box itself only.
LOOPBACK_ADDRESSES: Final = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    state_dir: Path
    """Where the index, recordings and prompt cache live."""
    company: str
    """The shop's name as the notice speaks it."""
    language: str
    """Prompt language: a folder of appliance/languages/ or ``speech.languages_dir``."""


@dataclass(frozen=True, slots=True)
class NoticeConfig:
    #: Why calls are recorded, as the notice says it (Hungarian inflection is generated).
    purpose: str
    #: The GDPR Art. 6 basis the full notice names (docs/legal.md).
    legal_basis: str
    #: Where the written notice is (the shop, a web page), as the notice says it.
    full_notice_at: str
    returning_caller_days: int
    """A number that heard the whole first layer within this many days gets the short form
    (0 = off)."""


@dataclass(frozen=True, slots=True)
class CallConfig:
    #: Rings before the box answers.
    answer_after_rings: int
    #: Rings before answering on a modem without full duplex (the phone rings first).
    half_duplex_answer_after_rings: int
    #: How long to wait for caller ID after a RING before answering without it.
    cid_wait_s: float
    #: Ring the shop's phone while the caller hears the notice.
    ring_during_notice: bool
    #: The key that refuses recording (the call still goes through).
    optout_key: str
    #: The key that repeats the call reference.
    repeat_key: str
    #: Ringing the shop this long without a lift leads to voicemail.
    agent_timeout_s: float
    #: Take a message when nobody lifts (else the caller hears goodbye).
    voicemail: bool
    #: Longest voicemail message.
    voicemail_max_s: float
    #: Longest call; the box ends it then.
    max_call_s: float
    #: Whisper the call reference into the earpiece when the shop lifts.
    whisper_reference: bool
    #: A caller held for the one handset leaves a message after this long.
    hold_max_s: float
    #: A held caller hears a reassurance this often.
    hold_reassure_s: float
    #: End a call after this long of silence on the line (and from the shop once bridged);
    #: 0 = never.
    silence_hangup_s: float
    details_key: str
    """The key that plays the second layer of the notice (the full Art. 13 text)."""
    reference_at_end: bool
    """The shop hung up first: say the reference and goodbye before hanging up."""


@dataclass(frozen=True, slots=True)
class RecordingConfig:
    #: Final recording format: "flac", "opus" or "wav".
    codec: str
    #: The live recording reaches the disk at least this often (what a power cut may lose).
    fsync_interval_s: float
    min_free_mb: int
    """No recording is started with less free space than this (megabytes, 10^6 bytes): the
    call is answered with the short "not recorded" notice, and the disk-full fault shows."""


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    #: Days a recording is kept (the notice speaks this figure).
    recordings_days: int
    #: Days a voicemail message is kept.
    voicemail_days: int
    #: Days the caller's number, name and event details are kept (the row itself stays).
    metadata_days: int


@dataclass(frozen=True, slots=True)
class LineConfig:
    name: str
    """Shown in the index and in ``appliance status``."""
    device: str
    """Serial path of the modem, a pty, or ``sim://`` for the built-in emulator."""
    country_code: str
    """T.35 country code for ``AT+GCI`` in hex (Hungary: 51)."""
    company: str
    """The company name this line's notice speaks ("" = ``device.company``)."""
    language: str
    """This line's prompt language ("" = ``device.language``)."""
    ring_on_s: float
    """A distinct handset ring burst for this line (0 = ``handset.ring_on_s``)."""
    ring_off_s: float
    """The pause after it (0 = ``handset.ring_off_s``)."""
    tx_lead_ms: int
    """Audio kept ahead in the modem's transmit buffer (20 ms steps; raise on underruns)."""
    liveness_interval_s: float
    """While idle, a bare ``AT`` this often: a modem that stopped answering faults the line
    (and is reopened with back-off) instead of leaving it looking ready."""
    audio: str
    """Where the line's call audio flows: "" = the modem's voice data stream (``+VTR``), or
    ``"alsa:<device>"`` for an FXO board / modem that exposes it as a sound card (call
    control stays AT commands on ``device``)."""
    duplex: str
    """Full-duplex voice (``+VTR``, needed to bridge the shop): ``"auto"`` finds out (a
    refused ``AT+VTR=?`` proves nothing; the first call tries ``AT+VTR``), ``"full"`` or
    ``"half"`` (answering machine behind the phone) say so (docs/line.md)."""
    echo_cancel: bool
    """Cancel the line's echo (the shop's voice returned by the modem's hybrid); off only
    for an audio path that cancels it already (a sound card with its own AEC)."""
    audio_formats: tuple[str, ...]
    """The modem's voice formats in order of preference, best first (``s16le``, ``alaw``,
    ``ulaw``, ``u8``, ``s8``); the first the modem offers at 8 kHz is used, others never."""


@dataclass(frozen=True, slots=True)
class HandsetConfig:
    #: Handset audio URL: "sim://" or "alsa:<device>".
    audio: str
    echo_cancel: bool
    """Cancel the handset's echo (the caller's voice returned by the SLIC's hybrid)."""
    #: Ringing frequency (the Ag1171 is made for 20–25 Hz).
    ring_hz: float
    #: Ring burst length (at most 33 % duty with ring_off_s).
    ring_on_s: float
    #: Pause between ring bursts.
    ring_off_s: float
    #: BCM pin driving the SLIC's RM (ringing mode).
    rm_pin: int
    #: BCM pin driving the SLIC's F/R (forward/reverse).
    fr_pin: int
    #: BCM pin reading the SLIC's SHK (switch hook).
    shk_pin: int


@dataclass(frozen=True, slots=True)
class PanelConfig:
    #: BCM pin of the ready LED.
    ready_pin: int
    #: BCM pin of the line LED.
    line_pin: int
    #: BCM pin of the recording LED.
    recording_pin: int
    #: BCM pin of the fault LED (blink codes, hw/pinout.md).
    fault_pin: int
    #: BCM pin of the front-panel button (to GND, internal pull-up).
    button_pin: int
    #: BCM pin of the bypass relay's driver (energised = calls go through the box).
    bypass_relay_pin: int
    #: A press at least this long is a long press (the health summary).
    long_press_s: float


@dataclass(frozen=True, slots=True)
class GpioConfig:
    #: gpiozero pin factory: "" picks the Pi's own, "mock" simulates the pins.
    pin_factory: str


@dataclass(frozen=True, slots=True)
class SpeechConfig:
    #: Piper voice name or .onnx path, or "espeak" for espeak-ng.
    voice: str
    #: espeak-ng's speaking rate, words per minute.
    espeak_wpm: int
    #: Overrides of prompt texts by name, in the device's language.
    texts: Mapping[str, str]
    #: A directory of further language folders ("" = the built-in languages only).
    languages_dir: str


@dataclass(frozen=True, slots=True)
class TonesConfig:
    #: Call-progress tone zone: "hu", "eu" or "us".
    zone: str


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    #: Log level: DEBUG, INFO, WARNING or ERROR.
    level: str


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    """Calling out from the handset."""

    interdigit_timeout_s: float
    """The number is complete this long after the last digit (or at ``#``)."""
    offhook_warning_s: float
    """Dial tone this long without a digit: howler tone, then silence and the fault LED."""
    howler_s: float
    """How long the howler sounds before silence."""
    no_answer_s: float
    """Give up an unanswered outgoing call after this long."""
    failure_listen_s: float
    """The shop hears the network's busy tone at most this long before the line is released."""
    record: bool
    """Allow recording outbound calls (only after the shop asks and the callee was told)."""
    record_code: str
    """Keys the shop dials during the call to ask for recording (or press the panel button)."""


#: What ``archive.verify`` accepts: compare the HEAD answer (size and ETag) with what was
#: sent, or download the object again and compare its SHA-256.
ARCHIVE_VERIFY_MODES: Final = ("etag", "download")


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    """Every call archived, encrypted, in S3-compatible object storage (docs/archive.md)."""

    enabled: bool
    """Upload finalized calls and replicate the index (``appliance archive run``)."""
    endpoint: str
    """The S3 endpoint URL (``https://s3.example.com``)."""
    bucket: str
    """The bucket every box of the chain writes to (each under its own prefix)."""
    prefix: str
    """This box's folder in the bucket ("" = the host name)."""
    region: str
    """Signature region (most S3-compatible services accept any)."""
    credentials_file: str
    """``access_key_id`` and ``secret_access_key`` in TOML, mode 0600: never in this file."""
    ca_file: str
    """PEM bundle of the CA to trust for the endpoint ("" = the system's)."""
    recipients: tuple[str, ...]
    """age public keys (``age1…``) of whoever may read the archive."""
    verify: str
    """After each upload: ``etag`` (HEAD: size and MD5 ETag) or ``download`` (re-hash)."""
    bandwidth_kbit_s: int
    """Upload cap in kbit/s (0 = no cap)."""
    poll_s: float
    """How often the uploader looks for newly finalized (or erased) calls."""
    retry_max_s: float
    """Ceiling of the retry back-off (1 s doubling up to this)."""
    replicate_index: bool
    """Replicate the index with Litestream (``appliance archive replicate``)."""


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The owner's web page (``appliance web``, docs/web.md)."""

    listen: str
    """Address the page listens on; plain HTTP (``tls = false``) only on a loopback address."""
    port: int
    """TCP port (443 needs CAP_NET_BIND_SERVICE, which appliance-web.service grants)."""
    tls: bool
    """HTTPS with the certificate made at install (``<state_dir>/web/tls.crt``)."""
    language: str
    """Page language: "" = device.language; the page has a switch too."""
    session_idle_s: float
    """A session ends after this long without a request."""
    session_max_s: float
    """A session ends this long after login, however busy."""
    lockout_failures: int
    """Wrong passwords in a row that lock an account (and throttle the client address)."""
    lockout_s: float
    """How long such a lock lasts."""


@dataclass(frozen=True, slots=True)
class Config:
    """The whole effective configuration."""

    device: DeviceConfig
    notice: NoticeConfig
    call: CallConfig
    recording: RecordingConfig
    retention: RetentionConfig
    lines: tuple[LineConfig, ...]
    handset: HandsetConfig
    panel: PanelConfig
    gpio: GpioConfig
    speech: SpeechConfig
    tones: TonesConfig
    logging: LoggingConfig
    outbound: OutboundConfig
    archive: ArchiveConfig
    web: WebConfig

    @property
    def db_path(self) -> Path:
        return self.device.state_dir / "appliance.db"

    @property
    def recordings_dir(self) -> Path:
        return self.device.state_dir / "recordings"

    @property
    def web_dir(self) -> Path:
        """The web page's own files: accounts, TLS certificate and key."""
        return self.device.state_dir / "web"

    @property
    def prompt_cache_dir(self) -> Path:
        return self.device.state_dir / "prompt-cache"

    def to_dict(self) -> dict[str, Any]:
        """Plain TOML-able dict (paths as strings) for ``appliance config show``."""
        plain: dict[str, Any] = _plain(dataclasses.asdict(self))
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --- loading -------------------------------------------------------------------------------


#: The table of ``defaults.toml`` that every ``[[lines]]`` table is laid over; it is the
#: packaged defaults' own (a user's file sets these keys per line, docs/configuration.md).
LINE_DEFAULTS: Final = "line_defaults"


def packaged_defaults() -> dict[str, Any]:
    """The defaults shipped inside the package (``appliance/defaults.toml``), including its
    :data:`LINE_DEFAULTS` table."""
    text = resources.files("appliance").joinpath("defaults.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def with_line_defaults(data: Mapping[str, Any], line_defaults: Mapping[str, Any]
                       ) -> dict[str, Any]:
    """``data`` with each ``[[lines]]`` table laid over ``line_defaults`` (a line's own keys
    win); anything that is not a list of tables is left for :func:`_build` to refuse."""
    out = dict(data)
    lines = out.get("lines")
    if isinstance(lines, list):
        out["lines"] = [merge(line_defaults, line) if isinstance(line, Mapping) else line
                        for line in lines]
    return out


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Lay ``over`` on ``base`` table by table; lists (``[[lines]]``) replace whole."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key != "texts":
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: Path | None = None,
    *,
    state_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load the effective configuration.

    Args:
        path: a TOML file laid over the defaults. ``None`` means ``$APPLIANCE_CONFIG``, else
            ``/etc/appliance/config.toml`` if it exists, else defaults only.
        state_dir: overrides ``device.state_dir`` (``--state-dir`` / ``$APPLIANCE_STATE_DIR``).
        overrides: a nested dict laid over everything (used by ``appliance demo`` and tests).

    Raises:
        ConfigError: unreadable file, TOML syntax error, unknown key or bad value.
    """
    data = packaged_defaults()
    line_defaults = data.pop(LINE_DEFAULTS)
    if path is None and os.environ.get(ENV_CONFIG):
        path = Path(os.environ[ENV_CONFIG])
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        try:
            user = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", "an existing TOML file", str(path)) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), "valid TOML", str(exc)) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(str(path), "UTF-8 text (TOML)",
                              f"byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
                              ) from None
        except OSError as exc:
            raise ConfigError(str(path), "a readable file", exc.strerror) from None
        data = merge(data, user)
    if overrides:
        data = merge(data, overrides)
    if state_dir is None and os.environ.get(ENV_STATE_DIR):
        state_dir = Path(os.environ[ENV_STATE_DIR])
    if state_dir is not None:
        data = merge(data, {"device": {"state_dir": str(state_dir)}})
    config: Config = _build(Config, with_line_defaults(data, line_defaults), "")
    _validate(config)
    return config


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a path (string)"
    if origin is tuple:
        return "a list of tables"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return "a table of strings"


def _build(tp: Any, value: Any, path: str) -> Any:
    """Convert TOML data into the annotated type, naming ``path`` in every error."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(path or "<root>", _describe(tp), value)
        hints = typing.get_type_hints(tp)
        fields = [f.name for f in dataclasses.fields(tp)]
        for key in value:
            if key not in fields:
                known = ", ".join(sorted(fields))
                raise ConfigError(_join(path, key), f"one of the known keys ({known})", key)
        kwargs = {}
        for name in fields:
            if name not in value:
                raise ConfigError(_join(path, name), "a value (the key is missing)", None)
            kwargs[name] = _build(hints[name], value[name], _join(path, name))
        return typing.cast(Any, tp)(**kwargs)
    if origin is tuple and typing.get_args(tp)[0] is str:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(path, "a list of strings", value)
        return tuple(value)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list) or not value:
            raise ConfigError(path, "a non-empty list of tables ([[...]])", value)
        return tuple(_build(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or isinstance(tp, types.GenericAlias):
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(path, "a table of strings", value)
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, "a string", value)
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(path, "a path (string)", value)
        return Path(value).expanduser()
    raise ConfigError(path, _describe(tp), value)  # pragma: no cover - schema bug


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass(frozen=True, slots=True)
class Range:
    """The values one numeric key allows: ``lo``..``hi`` inclusive, finite; with ``above`` the
    value must be more than ``lo`` (a duration that must not be zero)."""

    lo: float
    hi: float
    unit: str
    above: bool = False

    def allows(self, value: float) -> bool:
        """True when ``value`` is finite and inside the range."""
        return (math.isfinite(value) and (value > self.lo if self.above else value >= self.lo)
                and value <= self.hi)

    def describe(self) -> str:
        """What the error message says was expected."""
        if self.above:
            return f"more than {self.lo:g} and at most {self.hi:g} {self.unit}"
        return f"{self.lo:g}..{self.hi:g} {self.unit}"


_S: Final = "seconds"
_PIN: Final = Range(2, 27, "(BCM GPIO number)")
_DAYS: Final = Range(1, 36_500, "days")

#: Every numeric key's range — one table, checked before any rule that computes with the
#: values (a ring cadence of -1.25 s once divided by zero), so a bad number is exit 78 naming
#: the key, never a traceback or a line that misses every call. ``lines[].key`` is each line's.
#: tests/test_config.py fails for a numeric key missing here. Further rules (duty cycle,
#: 20 ms steps, "0 = off") are in :func:`_validate`.
RANGES: Final[dict[str, Range]] = {
    "call.answer_after_rings": Range(1, 20, "rings"),
    "call.half_duplex_answer_after_rings": Range(1, 20, "rings"),
    "call.cid_wait_s": Range(0, 5, _S),
    "call.agent_timeout_s": Range(0, 600, _S, above=True),
    "call.voicemail_max_s": Range(0, 3600, _S, above=True),
    "call.max_call_s": Range(0, 86_400, _S, above=True),
    "call.hold_max_s": Range(0, 3600, _S, above=True),
    "call.hold_reassure_s": Range(0, 600, _S, above=True),
    "call.silence_hangup_s": Range(0, 3600, _S),
    "notice.returning_caller_days": Range(0, 3650, "days (0 = off)"),
    "recording.fsync_interval_s": Range(0.1, 1.0, "seconds (at most 1 s of audio lost)"),
    "recording.min_free_mb": Range(0, 999_999, "megabytes (no recording started below)"),
    "retention.recordings_days": _DAYS,
    "retention.voicemail_days": _DAYS,
    "retention.metadata_days": _DAYS,
    "lines[].ring_on_s": Range(0, 10, "seconds (0 = handset.ring_on_s)"),
    "lines[].ring_off_s": Range(0, 60, "seconds (0 = handset.ring_off_s)"),
    "lines[].tx_lead_ms": Range(20, 200, "ms"),
    "lines[].liveness_interval_s": Range(0.5, 3600, _S),
    "handset.ring_hz": Range(20, 25, "Hz (AG1171 ring window)"),
    "handset.ring_on_s": Range(0, 10, _S, above=True),
    "handset.ring_off_s": Range(0, 60, _S, above=True),
    "handset.rm_pin": _PIN,
    "handset.fr_pin": _PIN,
    "handset.shk_pin": _PIN,
    "panel.ready_pin": _PIN,
    "panel.line_pin": _PIN,
    "panel.recording_pin": _PIN,
    "panel.fault_pin": _PIN,
    "panel.button_pin": _PIN,
    "panel.bypass_relay_pin": _PIN,
    "panel.long_press_s": Range(0.1, 30, _S),
    "speech.espeak_wpm": Range(100, 250, "words per minute"),
    "outbound.interdigit_timeout_s": Range(0, 3600, _S, above=True),
    "outbound.offhook_warning_s": Range(0, 3600, _S, above=True),
    "outbound.howler_s": Range(0, 3600, _S, above=True),
    "outbound.no_answer_s": Range(0, 3600, _S, above=True),
    "outbound.failure_listen_s": Range(0, 3600, _S, above=True),
    "archive.bandwidth_kbit_s": Range(0, 10_000_000, "kbit/s (0 = no cap)"),
    "archive.poll_s": Range(0.1, 3600, _S),
    "archive.retry_max_s": Range(1, 86_400, _S),
    "web.port": Range(1, 65535, "(TCP port)"),
    "web.session_idle_s": Range(0, 86_400, _S, above=True),
    "web.session_max_s": Range(0, 604_800, _S, above=True),
    "web.lockout_failures": Range(1, 100, "wrong passwords"),
    "web.lockout_s": Range(0, 86_400, _S, above=True),
}


def _check_ranges(c: Config) -> None:
    """Every key of :data:`RANGES` (on every line for ``lines[].…``) within its range."""
    for key, allowed in RANGES.items():
        section, name = key.split(".")
        if section == "lines[]":
            found = [(f"lines[{i}].{name}", getattr(line, name))
                     for i, line in enumerate(c.lines)]
        else:
            found = [(key, getattr(getattr(c, section), name))]
        for path, value in found:
            _check(allowed.allows(value), path, allowed.describe(), value)


def _check(ok: bool, key: str, expected: str, found: object) -> None:
    if not ok:
        raise ConfigError(key, expected, found)


def _validate(c: Config) -> None:
    """Value checks beyond types; each names its key."""
    _check_ranges(c)
    known = languages_for(c)  # raises for a broken language folder, naming it
    _check(c.device.language in known, "device.language", f"one of {known.codes}",
           c.device.language)
    _check(bool(c.device.company.strip()), "device.company", "a non-empty name", c.device.company)
    _check(c.call.optout_key in DTMF_KEYS, "call.optout_key", "one DTMF key 0-9 * #",
           c.call.optout_key)
    _check(c.call.repeat_key in DTMF_KEYS and c.call.repeat_key != c.call.optout_key,
           "call.repeat_key", "one DTMF key other than call.optout_key", c.call.repeat_key)
    _check(c.call.details_key in DTMF_KEYS
           and c.call.details_key not in (c.call.optout_key, c.call.repeat_key),
           "call.details_key", "one DTMF key other than call.optout_key and call.repeat_key",
           c.call.details_key)
    _check(c.call.silence_hangup_s == 0 or c.call.silence_hangup_s >= 5,
           "call.silence_hangup_s", "0 (off) or at least 5 seconds", c.call.silence_hangup_s)
    _check(c.recording.codec in CODECS, "recording.codec", f"one of {CODECS}", c.recording.codec)
    names = [line.name for line in c.lines]
    for i, line in enumerate(c.lines):
        _check(bool(line.name) and names.count(line.name) == 1, f"lines[{i}].name",
               "a unique non-empty name", line.name)
        _check(bool(line.device), f"lines[{i}].device", "a serial path or sim://", line.device)
        _check(line.language == "" or line.language in known, f"lines[{i}].language",
               f'"" or one of {known.codes}', line.language)
        _check(line.tx_lead_ms % 20 == 0, f"lines[{i}].tx_lead_ms",
               "20..200 in steps of 20 (ms)", line.tx_lead_ms)
        if line.ring_on_s or line.ring_off_s:
            on_s = line.ring_on_s or c.handset.ring_on_s
            off_s = line.ring_off_s or c.handset.ring_off_s
            _check(on_s > 0 and on_s / (on_s + off_s) <= 0.33, f"lines[{i}].ring_on_s",
                   "a ring burst with ≤ 33 % duty (AG1171 absolute maximum)", line.ring_on_s)
        _check(len(line.country_code) == 2 and all(ch in "0123456789ABCDEFabcdef"
                                                   for ch in line.country_code),
               f"lines[{i}].country_code", "two hex digits (T.35, Hungary = 51)",
               line.country_code)
        _check(line.audio == "" or (line.audio.startswith("alsa:")
                                    and line.audio[len("alsa:"):].strip() != ""),
               f"lines[{i}].audio", '"" (the modem\'s voice stream) or "alsa:<device>"',
               line.audio)
        _check(line.duplex in ("auto", "full", "half"), f"lines[{i}].duplex",
               '"auto", "full" or "half"', line.duplex)
        _check(bool(line.audio_formats) and all(f in FORMAT_NAMES for f in line.audio_formats)
               and len(set(line.audio_formats)) == len(line.audio_formats),
               f"lines[{i}].audio_formats",
               f"a non-empty list of distinct formats from {sorted(FORMAT_NAMES)}",
               line.audio_formats)
    h = c.handset
    _check(h.audio == "sim://" or h.audio.startswith("alsa:"), "handset.audio",
           '"sim://" or "alsa:<device>"', h.audio)
    duty = h.ring_on_s / (h.ring_on_s + h.ring_off_s)  # both > 0: RANGES
    _check(duty <= 0.33, "handset.ring_on_s",
           "a ring burst with ≤ 33 % duty (AG1171 absolute maximum)", h.ring_on_s)
    _validate_pins(c)
    _check(c.gpio.pin_factory in ("", "mock", "lgpio", "rpigpio", "pigpio", "native"),
           "gpio.pin_factory", '"", "mock", "lgpio", "rpigpio", "pigpio" or "native"',
           c.gpio.pin_factory)
    _check(c.tones.zone in ("hu", "eu", "us"), "tones.zone", '"hu", "eu" or "us"', c.tones.zone)
    _check(c.logging.level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "logging.level",
           "DEBUG, INFO, WARNING or ERROR", c.logging.level)
    o = c.outbound
    _check(1 <= len(o.record_code) <= 4 and all(ch in DTMF_KEYS for ch in o.record_code),
           "outbound.record_code", "1–4 DTMF keys 0-9 * #", o.record_code)
    w = c.web
    _check(w.tls or w.listen in LOOPBACK_ADDRESSES, "web.listen",
           f"a loopback address {LOOPBACK_ADDRESSES} when web.tls = false (plain HTTP never "
           "leaves the box)", w.listen)
    _check(w.language in ("", *LANGUAGES), "web.language", f'"" or one of {LANGUAGES}',
           w.language)
    _validate_archive(c.archive)


#: S3 bucket names: 3–63 lower-case letters, digits, dots and hyphens (AWS naming rules).
_BUCKET_RE: Final = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
#: A box prefix: letters, digits, ``.``, ``_``, ``-`` (it is also a folder name elsewhere).
_PREFIX_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _validate_archive(a: ArchiveConfig) -> None:
    """``[archive]`` checks; with ``enabled = false`` only what is set must be well-formed."""
    from urllib.parse import urlsplit

    if a.enabled or a.endpoint:
        url = urlsplit(a.endpoint)
        _check(url.scheme in ("http", "https") and bool(url.hostname) and url.path in ("", "/"),
               "archive.endpoint", "an http(s):// URL of the S3 service", a.endpoint)
    if a.enabled or a.bucket:
        _check(bool(_BUCKET_RE.match(a.bucket)), "archive.bucket",
               "an S3 bucket name (3-63 of a-z 0-9 . -)", a.bucket)
    _check(a.prefix == "" or bool(_PREFIX_RE.match(a.prefix)), "archive.prefix",
           '"" (the host name) or a name of letters, digits, . _ -', a.prefix)
    if a.enabled:
        _check(a.credentials_file.startswith("/"), "archive.credentials_file",
               "an absolute path", a.credentials_file)
        _check(bool(a.recipients), "archive.recipients",
               "at least one age public key (age1…)", list(a.recipients))
    _check(a.ca_file == "" or a.ca_file.startswith("/"), "archive.ca_file",
           '"" or an absolute path', a.ca_file)
    for i, key in enumerate(a.recipients):
        _check(_age_recipient_ok(key), f"archive.recipients[{i}]",
               "an age X25519 public key (age1…)", key)
    _check(a.verify in ARCHIVE_VERIFY_MODES, "archive.verify",
           f"one of {ARCHIVE_VERIFY_MODES}", a.verify)


def _age_recipient_ok(key: str) -> bool:
    """Whether ``key`` parses as an age X25519 recipient (pyrage, when installed; else the
    bech32 shape, so a box without the archive extra still loads its configuration)."""
    try:
        import pyrage
    except ImportError:
        return bool(re.fullmatch(r"age1[02-9ac-hj-np-z]{58}", key))
    try:
        pyrage.x25519.Recipient.from_str(key)
    except pyrage.RecipientError:
        return False
    return True


#: BCM pins the appliance must not use: the UART pair (serial console / Bluetooth UART;
#: callattendant's defaults collided with it, hw/ag1171.md §1.5).
RESERVED_PINS: Final = {14: "UART TXD", 15: "UART RXD"}


def _validate_pins(c: Config) -> None:
    """Every GPIO used once, within BCM 2..27, and never the UART pins."""
    uses: dict[int, str] = {}
    for section, names in (
        ("handset", ("rm_pin", "fr_pin", "shk_pin")),
        ("panel", ("ready_pin", "line_pin", "recording_pin", "fault_pin", "button_pin",
                   "bypass_relay_pin")),
    ):
        for name in names:
            key = f"{section}.{name}"
            pin = getattr(getattr(c, section), name)
            _check(pin not in RESERVED_PINS, key,
                   f"a pin other than GPIO{pin} ({RESERVED_PINS.get(pin)})", pin)
            if pin in uses:
                raise ConfigError(key, f"a pin not already used by {uses[pin]}", pin)
            uses[pin] = key
