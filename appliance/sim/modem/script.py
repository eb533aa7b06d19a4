"""Scripted incoming calls for the modem emulator (``appliance sim-modem --script FILE``).

A script is a TOML file with a ``[[calls]]`` array (format in docs/line.md). Each call rings the
emulated line with caller ID, and once whatever host holds the port answers, plays the caller's
audio, presses keys and hangs up on schedule — only through
:class:`~appliance.sim.modem.emulator.SimModem`'s public triggers (``ring``,
``set_caller_audio``, ``press_key``, ``remote_hangup``, ``wait_off_hook``, ``wait_on_hook``),
so a script drives any V.253 client exactly as the tests' scripted callers do.

Written by hand: a small schedule of emulator triggers; TOML parsing is ``tomllib``, WAV reading
``soundfile`` and resampling ``soxr``.
"""

from __future__ import annotations

import asyncio
import logging
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from appliance.audio.pcm import SAMPLE_RATE_HZ
from appliance.errors import ConfigError
from appliance.line.codec import DTMF_DIGITS
from appliance.sim.modem.emulator import SimModem

__all__ = [
    "CallScript",
    "ScriptedCall",
    "ScriptedCallResult",
    "ScriptedKey",
    "audio_source",
    "load_script",
    "parse_script",
    "play_script",
]

_LOGGER = logging.getLogger(__name__)

TONE_LEVEL: Final = 0.3
"""``tone:HZ`` caller audio amplitude (≈ −10.5 dBFS, a talker's level on a line)."""
KEY_DURATION_MS: Final = 120
"""Key press length (a person's DTMF press; detectors need ≥ 40 ms, ITU-T Q.24)."""
HOST_HANGUP_TIMEOUT_S: Final = 60.0
"""After the caller hangs up, how long the host may take to go on-hook before we move on."""
DEFAULT_MAX_RINGS: Final = 10
"""The caller gives up after this many rings unanswered (≈ 50 s with Hungarian cadence)."""
_CALL_KEYS: Final = frozenset(
    {"at_s", "number", "name", "withheld", "cid", "audio", "keys", "hangup_after_s",
     "max_rings"}
)  # fmt: skip

Event = Callable[[str, dict[str, Any]], None]
"""``on_event(kind, detail)``: ``ringing``, ``answered``, ``key``, ``caller_hangup``,
``host_hangup``, ``unanswered``, ``done``."""


@dataclass(frozen=True, slots=True)
class ScriptedKey:
    """One key press, ``at_s`` seconds after the host answered."""

    at_s: float
    digit: str


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """One incoming call.

    Attributes:
        at_s: when it starts ringing, seconds after the script starts (a call still in progress
            delays the next one until the line is on-hook again).
        number / name: caller ID (None: not sent).
        withheld: caller ID ``P`` (private) instead of a number.
        cid_before_first_ring: ``cid = "before"`` (ETSI/UK) vs ``"after"`` (Bellcore), §7.1.
        audio: ``"tone:440"``, a WAV path (resolved against the script's folder) or None
            (silence) — the caller's voice from the answer on.
        keys: key presses, times relative to the answer.
        hangup_after_s: the caller hangs up this long after the answer (None: the caller waits
            for the host to hang up).
        max_rings: rings before the caller gives up unanswered.
    """

    at_s: float = 0.0
    number: str | None = None
    name: str | None = None
    withheld: bool = False
    cid_before_first_ring: bool = False
    audio: str | None = None
    keys: tuple[ScriptedKey, ...] = ()
    hangup_after_s: float | None = None
    max_rings: int = DEFAULT_MAX_RINGS


@dataclass(frozen=True, slots=True)
class CallScript:
    """A parsed script: calls in start order; ``base_dir`` resolves relative WAV paths."""

    calls: tuple[ScriptedCall, ...]
    base_dir: Path = field(default_factory=Path.cwd)


@dataclass(slots=True)
class ScriptedCallResult:
    """What happened to one scripted call (for the CLI's summary and tests)."""

    index: int
    number: str | None
    answered: bool = False
    answer_after_s: float | None = None
    keys_sent: str = ""
    caller_hung_up: bool = False
    host_hung_up: bool = False
    heard_s: float = 0.0
    """Seconds of host audio the modem played to this caller."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "index": self.index,
            "number": self.number,
            "answered": self.answered,
            "answer_after_s": self.answer_after_s,
            "keys_sent": self.keys_sent,
            "caller_hung_up": self.caller_hung_up,
            "host_hung_up": self.host_hung_up,
            "heard_s": round(self.heard_s, 3),
        }


# --- parsing ---------------------------------------------------------------------------------


def _bad(key: str, expected: str, got: object) -> ConfigError:
    return ConfigError(key, expected, got)


def _number(item: Mapping[str, Any], key: str, where: str, default: float | None) -> float | None:
    value = item.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _bad(f"{where}.{key}", "a number of seconds ≥ 0", value)
    return float(value)


def _text(item: Mapping[str, Any], key: str, where: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise _bad(f"{where}.{key}", "a string", value)
    return value


def _parse_call(item: object, where: str) -> ScriptedCall:
    if not isinstance(item, dict):
        raise _bad(where, "a table", item)
    unknown = sorted(set(item) - _CALL_KEYS)
    if unknown:
        raise _bad(f"{where}.{unknown[0]}", f"one of {sorted(_CALL_KEYS)}", unknown[0])
    cid = item.get("cid", "after")
    if cid not in ("before", "after"):
        raise _bad(f"{where}.cid", '"before" or "after" (the first ring)', cid)
    withheld = item.get("withheld", False)
    if not isinstance(withheld, bool):
        raise _bad(f"{where}.withheld", "true or false", withheld)
    audio = _text(item, "audio", where)
    if audio is not None and audio.startswith("tone:"):
        _tone_hz(audio, f"{where}.audio")
    keys_raw = item.get("keys", [])
    if not isinstance(keys_raw, list):
        raise _bad(f"{where}.keys", "an array of {at_s, digit} tables", keys_raw)
    keys: list[ScriptedKey] = []
    for k, key in enumerate(keys_raw):
        kwhere = f"{where}.keys[{k}]"
        if not isinstance(key, dict):
            raise _bad(kwhere, "a table {at_s, digit}", key)
        digit = key.get("digit")
        if not isinstance(digit, str) or len(digit) != 1 or digit not in DTMF_DIGITS:
            raise _bad(f"{kwhere}.digit", "one DTMF key 0-9 * # A-D", digit)
        at_s = _number(key, "at_s", kwhere, None)
        if at_s is None:
            raise _bad(f"{kwhere}.at_s", "seconds after the answer", None)
        keys.append(ScriptedKey(at_s, digit))
    max_rings = item.get("max_rings", DEFAULT_MAX_RINGS)
    if isinstance(max_rings, bool) or not isinstance(max_rings, int) or max_rings < 1:
        raise _bad(f"{where}.max_rings", "a whole number ≥ 1", max_rings)
    return ScriptedCall(
        at_s=_number(item, "at_s", where, 0.0) or 0.0,
        number=_text(item, "number", where),
        name=_text(item, "name", where),
        withheld=withheld,
        cid_before_first_ring=cid == "before",
        audio=audio,
        keys=tuple(sorted(keys, key=lambda k: k.at_s)),
        hangup_after_s=_number(item, "hangup_after_s", where, None),
        max_rings=max_rings,
    )


def parse_script(data: Mapping[str, Any], base_dir: Path | None = None) -> CallScript:
    """Build a :class:`CallScript` from parsed TOML.

    Raises:
        ConfigError: naming the offending key (``calls[1].keys[0].digit`` …).
    """
    calls_raw = data.get("calls")
    if not isinstance(calls_raw, list) or not calls_raw:
        raise _bad("calls", "at least one [[calls]] table", calls_raw)
    unknown = sorted(set(data) - {"calls"})
    if unknown:
        raise _bad(unknown[0], "only [[calls]] tables", unknown[0])
    calls = [_parse_call(item, f"calls[{i}]") for i, item in enumerate(calls_raw)]
    return CallScript(
        calls=tuple(sorted(calls, key=lambda c: c.at_s)),
        base_dir=base_dir if base_dir is not None else Path.cwd(),
    )


def load_script(path: Path) -> CallScript:
    """Read and check a script file; relative WAV paths resolve against its folder.

    Raises:
        ConfigError: unreadable file, bad TOML, or a bad key (named).
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("--script", "a readable TOML file", f"{path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--script", "valid TOML", f"{path}: {exc}") from exc
    script = parse_script(data, path.parent)
    for i, call in enumerate(script.calls):
        if call.audio is not None and not call.audio.startswith("tone:"):
            wav = _resolve(call.audio, script.base_dir)
            if not wav.is_file():
                raise ConfigError(f"calls[{i}].audio", "an existing WAV file or tone:HZ",
                                  str(wav))
    return script


# --- audio -----------------------------------------------------------------------------------


def _tone_hz(spec: str, where: str) -> float:
    try:
        hz = float(spec.removeprefix("tone:"))
    except ValueError:
        raise _bad(where, "tone:HZ with 50 ≤ HZ ≤ 3900", spec) from None
    if not 50.0 <= hz <= SAMPLE_RATE_HZ / 2 - 100:
        raise _bad(where, "tone:HZ with 50 ≤ HZ ≤ 3900", spec)
    return hz


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p


def _read_wav(path: Path) -> npt.NDArray[np.int16]:
    import soundfile  # lazy: only WAV scripts need libsndfile
    import soxr

    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono: npt.NDArray[np.float32] = np.asarray(audio, dtype=np.float32).mean(axis=1)
    if rate != SAMPLE_RATE_HZ:
        mono = np.asarray(soxr.resample(mono, rate, SAMPLE_RATE_HZ), dtype=np.float32)
    out: npt.NDArray[np.int16] = np.clip(np.rint(mono * 32767.0), -32768, 32767).astype(np.int16)
    return out


def audio_source(spec: str | None, base_dir: Path) -> Callable[[int], npt.NDArray[np.int16]]:
    """The caller's voice for ``set_caller_audio``: ``source(n) → int16[n]``.

    ``tone:HZ`` is a continuous sine (phase kept across calls); a WAV plays once, then silence;
    None is silence.

    Raises:
        ConfigError: a bad tone spec or an unreadable WAV.
    """
    if spec is None:
        return lambda n: np.zeros(n, dtype=np.int16)
    if spec.startswith("tone:"):
        hz = _tone_hz(spec, "audio")
        index = 0

        def tone(n: int) -> npt.NDArray[np.int16]:
            nonlocal index
            t = (index + np.arange(n)) / SAMPLE_RATE_HZ
            index += n
            return np.rint(TONE_LEVEL * 32767.0 * np.sin(2 * np.pi * hz * t)).astype(np.int16)

        return tone
    path = _resolve(spec, base_dir)
    try:
        samples = _read_wav(path)
    except Exception as exc:  # libsndfile raises its own types; the CLI reports it
        raise ConfigError("audio", "a readable WAV file", f"{path}: {exc}") from exc
    pos = 0

    def wav(n: int) -> npt.NDArray[np.int16]:
        nonlocal pos
        out = samples[pos : pos + n]
        pos += len(out)
        if len(out) < n:
            out = np.concatenate([out, np.zeros(n - len(out), dtype=np.int16)])
        return out

    return wav


# --- playing ---------------------------------------------------------------------------------


async def _sleep_until(loop: asyncio.AbstractEventLoop, t: float) -> None:
    # Scheduling on absolute loop.time() targets so delays never accumulate.
    delay = t - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _play_call(
    sim: SimModem,
    call: ScriptedCall,
    index: int,
    base_dir: Path,
    emit: Event,
    host_hangup_timeout_s: float,
) -> ScriptedCallResult:
    loop = asyncio.get_running_loop()
    result = ScriptedCallResult(index, call.number)
    source = audio_source(call.audio, base_dir)
    start = loop.time()
    emit("ringing", {"call": index, "number": call.number, "name": call.name,
                     "withheld": call.withheld})
    sim.ring(call.number, call.name, withheld=call.withheld, max_rings=call.max_rings,
             cid_before_first_ring=call.cid_before_first_ring)
    # The ring generator stops by itself after max_rings; the caller gives up one period later.
    give_up_s = call.max_rings * sim.ring_period_s
    try:
        await sim.wait_off_hook(give_up_s)
    except TimeoutError:
        sim.stop_ringing()
        emit("unanswered", {"call": index, "rings": call.max_rings})
        return result
    answered_at = loop.time()
    result.answered = True
    result.answer_after_s = round(answered_at - start, 3)
    emit("answered", {"call": index, "after_s": result.answer_after_s})

    heard_samples = 0

    def heard(samples: npt.NDArray[np.int16], _t: float) -> None:
        nonlocal heard_samples
        heard_samples += len(samples)

    sim.add_tx_listener(heard)
    sim.set_caller_audio(source)
    on_hook = asyncio.create_task(sim.wait_on_hook(float("inf")), name=f"script-call-{index}-hook")
    try:
        steps: list[tuple[float, str]] = [(k.at_s, k.digit) for k in call.keys]
        if call.hangup_after_s is not None:
            steps.append((call.hangup_after_s, "hangup"))
        steps.sort(key=lambda s: s[0])
        for at_s, what in steps:
            sleeper = asyncio.create_task(_sleep_until(loop, answered_at + at_s),
                                          name=f"script-call-{index}-step")
            await asyncio.wait({sleeper, on_hook}, return_when=asyncio.FIRST_COMPLETED)
            if on_hook.done():
                sleeper.cancel()
                break
            if what == "hangup":
                sim.remote_hangup()
                result.caller_hung_up = True
                emit("caller_hangup", {"call": index, "at_s": at_s})
            else:
                sim.press_key(what, KEY_DURATION_MS)
                result.keys_sent += what
                emit("key", {"call": index, "digit": what, "at_s": at_s})
        try:
            timeout = host_hangup_timeout_s if result.caller_hung_up else None
            async with asyncio.timeout(timeout):
                await asyncio.shield(on_hook)
            result.host_hung_up = True
            emit("host_hangup", {"call": index,
                                 "after_s": round(loop.time() - answered_at, 3)})
        except TimeoutError:
            _LOGGER.warning("call %d: the host stayed off-hook %.0f s after the caller hung up",
                            index, host_hangup_timeout_s)
    finally:
        on_hook.cancel()
        sim.remove_tx_listener(heard)
        result.heard_s = heard_samples / SAMPLE_RATE_HZ
        sim.set_caller_audio(None)
    return result


async def play_script(
    sim: SimModem,
    script: CallScript,
    *,
    on_event: Event | None = None,
    host_hangup_timeout_s: float = HOST_HANGUP_TIMEOUT_S,
) -> list[ScriptedCallResult]:
    """Play every call of ``script`` against whatever host drives ``sim``; return the results.

    Calls start at their ``at_s`` (seconds after this coroutine starts), one at a time: a call
    whose time has come while the line is still busy starts as soon as it is on-hook again.
    ``on_event(kind, detail)`` is called from the event loop for each step (see :data:`Event`).
    Cancelling stops the script; the caller's audio is reset to silence.
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    def emit(kind: str, detail: dict[str, Any]) -> None:
        _LOGGER.info("script: %s %s", kind, detail)
        if on_event is not None:
            on_event(kind, detail)

    results: list[ScriptedCallResult] = []
    for index, call in enumerate(script.calls):
        await _sleep_until(loop, t0 + call.at_s)
        if sim.off_hook:
            await sim.wait_on_hook(float("inf"))
        results.append(
            await _play_call(sim, call, index, script.base_dir, emit, host_hangup_timeout_s)
        )
    emit("done", {"calls": len(results), "answered": sum(r.answered for r in results)})
    return results
