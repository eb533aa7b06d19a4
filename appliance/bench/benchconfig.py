"""The benchmark's daemon configuration, in a module of its own.

The daemon child (:mod:`appliance.bench.worker`) imports only this, not the instruments
(:mod:`appliance.bench.calls` pulls in the emulator, the probes and soundfile): what the
benchmark loads into the daemon's process would count in the daemon's RSS figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from appliance.config import Config, load_config, packaged_defaults

#: A short notice keeps each benchmark call short; the off-hook → first-byte figure does not
#: depend on the notice's length (the reference is still spoken, as in production). The time
#: to a person is measured with the default notice instead (appliance/bench/human.py).
BENCH_NOTICE: Final = "Tájékoztatjuk, hogy a hívást rögzítjük."
#: ``recording.fsync_interval_s`` as packaged, for the recorders the bench runs outside a daemon.
FSYNC_INTERVAL_S: Final = float(packaged_defaults()["recording"]["fsync_interval_s"])


def bench_config(state_dir: Path, devices: list[str], *, codec: str | None = None,
                 agent_timeout_s: float | None = None, voicemail_max_s: float | None = None,
                 notice: str | None = BENCH_NOTICE, returning_caller_days: int | None = None,
                 echo_cancel: bool | None = None, line_extra: dict[str, Any] | None = None,
                 recording_extra: dict[str, Any] | None = None) -> Config:
    """Packaged defaults + simulated hardware + the benchmark's short notice (``notice``;
    None: the packaged notice, as a shop with the default configuration speaks it).
    ``line_extra`` and ``recording_extra`` are laid on every ``[[lines]]`` table and on
    ``[recording]``. Every other argument left None keeps the packaged default
    (appliance/defaults.toml: the bench measures what a shop runs unless told otherwise).

    ``echo_cancel=False`` turns both cancellers off: a canceller reshapes the caller's
    samples, so a recording can be compared sample for sample only without it.
    """
    cancel = _given(echo_cancel=echo_cancel)
    overrides: dict[str, Any] = {
        "lines": [{"name": f"line{i + 1}", "device": d, "country_code": "51",
                   **cancel, **(line_extra or {})}
                  for i, d in enumerate(devices)],
        "handset": {"audio": "sim://", **cancel},
        "gpio": {"pin_factory": "mock"},
        "call": {"cid_wait_s": 0.0, "answer_after_rings": 1,
                 **_given(agent_timeout_s=agent_timeout_s, voicemail_max_s=voicemail_max_s)},
        # espeak-ng, not Piper: the prompt library is rebuilt in every fresh state dir.
        "speech": {"voice": "espeak", "texts": {} if notice is None else {"notice": notice}},
        "recording": {**_given(codec=codec), **(recording_extra or {})},
        "notice": _given(returning_caller_days=returning_caller_days),
    }
    return load_config(Path("/dev/null"), state_dir=state_dir, overrides=overrides)


def _given(**values: Any) -> dict[str, Any]:
    """The keys whose value is not None (None: the packaged default stays)."""
    return {key: value for key, value in values.items() if value is not None}
