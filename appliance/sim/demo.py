"""``appliance demo``: one whole call through the real daemon on simulated hardware.

The line is the modem emulator served on a real pty and opened by pyserial — the same code
path as a USB modem. The handset is the AG1171 driver on gpiozero MockFactory pins with the
simulated shop assistant on them, and the in-memory handset audio. Everything else (store,
recorder, prompts, call flow) is the product itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from appliance.audio.backend import SimHandsetAudio
from appliance.audio.hybrid import (
    HANDSET_ERL_DB,
    HANDSET_TAIL_MS,
    LINE_ERL_DB,
    LINE_TAIL_MS,
    HybridSpec,
)
from appliance.audio.pcm import SAMPLE_RATE_HZ
from appliance.config import Config, load_config
from appliance.daemon.app import Application
from appliance.reference import format_reference
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.pty import PtyModemServer
from appliance.sim.world import (
    LINES_HU,
    SCENARIOS,
    ScriptedCaller,
    SimulatedAgent,
    World,
    render_speech,
)

_LOGGER = logging.getLogger(__name__)

#: Upper bound for one demo call; a healthy run takes well under a minute.
DEMO_TIMEOUT_S: Final = 150.0
#: The simulated assistant lifts after this many ring bursts (the issue's "after two rings").
LIFT_AFTER_RINGS: Final = 2
#: How long the simulated people may take to finish after the call has ended.
ACTORS_GRACE_S: Final = 5.0
#: The demo's line is a real line: the modem's hybrid returns the shop's voice in the caller
#: channel, the SLIC's returns the caller's voice in the mouthpiece (audio/hybrid.py).
DEMO_LINE_ECHO: Final = HybridSpec(erl_db=LINE_ERL_DB, tail_ms=LINE_TAIL_MS, seed=0)
DEMO_HANDSET_ECHO: Final = HybridSpec(erl_db=HANDSET_ERL_DB, tail_ms=HANDSET_TAIL_MS, seed=100)


@dataclass
class DemoResult:
    summary: dict[str, Any]
    timeline: list[tuple[float, str, str, str]] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)


#: The second line of the ``two-lines`` scenario: its own name and a distinct ring.
SECOND_LINE: Final[dict[str, Any]] = {"name": "second", "ring_on_s": 0.8, "ring_off_s": 4.2}
#: The second caller rings this long after the first (their calls overlap).
SECOND_CALLER_DELAY_S: Final = 6.0
ALL_SCENARIOS: Final = (*SCENARIOS, "two-lines", "half-duplex")
#: ``half-duplex``: the phone (on the line through the bypass relay) rings this many times
#: before the box answers as an answering machine (production default 4, shortened here).
HALF_DUPLEX_RINGS: Final = 2


def demo_config(state_dir: Path, scenario: str, devices: list[str],
                extra: dict[str, Any] | None = None) -> Config:
    """The demo's configuration: packaged defaults, simulated hardware, short waits."""
    lines = [{"name": "main", "device": devices[0], "country_code": "51"}]
    for device in devices[1:]:
        lines.append({**SECOND_LINE, "device": device, "country_code": "51"})
    overrides: dict[str, Any] = {
        "lines": lines,
        "handset": {"audio": "sim://"},
        "gpio": {"pin_factory": "mock"},
        # The voicemail scenario should not wait the production 30 s for nobody.
        "call": {"agent_timeout_s": 8.0, "voicemail_max_s": 20.0},
    }
    if scenario == "half-duplex":
        overrides["call"]["half_duplex_answer_after_rings"] = HALF_DUPLEX_RINGS
        # As a technician sets it once `modem probe --try-vtr` found the modem half duplex:
        # without it the first call after start-up is the one that finds out (docs/line.md).
        for line in lines:
            line["duplex"] = "half"
    if extra:
        from appliance.config import merge

        overrides = merge(overrides, extra)
    return load_config(Path("/dev/null"), state_dir=state_dir, overrides=overrides)


async def run_demo(
    scenario: str,
    state_dir: Path,
    *,
    on_entry: Callable[[float, str, str, str], None] | None = None,
    config_extra: dict[str, Any] | None = None,
    profile: str = "conexant",
    line_echo: HybridSpec | None = DEMO_LINE_ECHO,
    handset_echo: HybridSpec | None = DEMO_HANDSET_ECHO,
    modem_options: dict[str, Any] | None = None,
) -> DemoResult:
    """Run one simulated call (two for ``two-lines``) end to end; summaries and timeline.

    ``two-lines``: two callers on two emulated modems at overlapping times and one shared
    handset — the first is put through, the second holds and is put through after the first
    hangs up. ``DemoResult.summaries`` has one summary per call (``summary`` is the first).
    ``half-duplex``: the emulated modem has no ``+VTR``; the box lets the
    phone ring first, then answers as an answering machine and the caller leaves a message.
    ``line_echo`` / ``handset_echo``: the hybrids of the modem and of the SLIC (None: an
    echo-free line, as no real one is); a second line's hybrid is another path of that shape.
    ``modem_options``: :class:`~appliance.sim.modem.profiles.SimProfile` fields to change on every
    emulated modem (e.g. ``{"vtr_test_command": False}``).
    """
    if scenario not in ALL_SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(ALL_SCENARIOS)}")
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    n_lines = 2 if scenario == "two-lines" else 1
    caller_scenario = {"two-lines": "answered", "half-duplex": "voicemail"}.get(scenario,
                                                                               scenario)
    world = World(on_entry=on_entry)
    speech_texts = dict(LINES_HU)
    speech = await asyncio.to_thread(
        lambda: {k: render_speech(v, f0_hz=110.0 if k.startswith("caller") else 190.0,
                                  seed=len(k)) for k, v in speech_texts.items()})
    servers = [
        PtyModemServer(SimModem(profile, echo=line_echo and dataclasses.replace(
            line_echo, seed=line_echo.seed + i)))
        for i in range(n_lines)
    ]
    for server in servers:
        if scenario == "half-duplex":
            server.sim.profile = dataclasses.replace(server.sim.profile, full_duplex=False)
        if modem_options:
            server.sim.profile = dataclasses.replace(server.sim.profile, **modem_options)
    paths = [await server.start() for server in servers]
    for path in paths:
        world.log("sim", "modem emulator on pty", path)
    config = demo_config(state_dir, scenario, paths, config_extra)
    factory = MockFactory(pin_class=MockPWMPin)
    handset = SimHandsetAudio(echo=handset_echo)
    app = Application(config, pin_factory=factory, handset_audio=handset)
    app.observers.append(
        lambda ref, state, detail: world.observe_call(ref, state, detail, app.line_of(ref)))
    t_start = time.monotonic()
    try:
        await app.start()
        await app.wait_ready(30.0)
        modem = app.lines[0].modem
        world.log("appliance", "ready", f"modem {modem.chipset if modem else '?'}")
        agent = SimulatedAgent(
            world,
            pin_factory=factory,
            rm_pin=config.handset.rm_pin,
            shk_pin=config.handset.shk_pin,
            lift_after_rings=(None if scenario in ("voicemail", "half-duplex")
                              else LIFT_AFTER_RINGS),
            speech=speech,
            hangs_up_first=scenario == "details",
        )
        handset.connect_user(agent.mouth, agent.ear)
        callers = [
            ScriptedCaller(servers[0].sim, world, caller_scenario, speech=speech,
                           optout_key=config.call.optout_key,
                           details_key=config.call.details_key,
                           # "At the last moment" of the first layer: 0.3 s before its end.
                           details_at_s=max(0.0, app.prompts.notice.size / SAMPLE_RATE_HZ - 0.3)),
        ]
        if n_lines == 2:
            second_speech = await asyncio.to_thread(
                lambda: {k: render_speech(v, f0_hz=150.0, seed=len(k) + 7)
                         for k, v in speech_texts.items() if k.startswith("caller")})
            callers.append(ScriptedCaller(
                servers[1].sim, world, "answered", number="+36209876543",
                name="NAGY PETER", line=SECOND_LINE["name"],
                speech={**speech, **second_speech}, optout_key=config.call.optout_key,
                details_key=config.call.details_key))

        async def second_caller() -> None:
            await asyncio.sleep(SECOND_CALLER_DELAY_S)
            await callers[1].run()

        actors = [
            asyncio.create_task(callers[0].run(), name="sim-caller"),
            asyncio.create_task(agent.run(calls=n_lines), name="sim-agent"),
        ]
        if n_lines == 2:
            actors.append(asyncio.create_task(second_caller(), name="sim-caller-2"))
        results = []
        try:
            async with asyncio.timeout(DEMO_TIMEOUT_S * n_lines):
                for _ in range(n_lines):
                    results.append(await app.completed.get())
                # The people finish their last act (the shop puts the phone down) promptly.
                await asyncio.wait(actors, timeout=ACTORS_GRACE_S)
        finally:
            for task in actors:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        pins = {
            name: [(round(t, 3), bool(s)) for t, s in _pin_history(factory, pin)]
            for name, pin in (("ring_rm", config.handset.rm_pin),
                              ("led_recording", config.panel.recording_pin),
                              ("led_line", config.panel.line_pin),
                              ("led_fault", config.panel.fault_pin),
                              ("bypass_relay", config.panel.bypass_relay_pin))
        }
        summaries = []
        for result in sorted(results, key=lambda r: (app.store.get_call(r.reference) or {})
                             .get("ring_at") or 0):
            row = app.store.get_call(result.reference) or {}
            events = app.store.events(result.reference)
            t0 = events[0]["t"] if events else 0.0
            bridged_t = next((e["t"] for e in events if e["state"] == "bridged"), None)
            line_index = next((i for i, line in enumerate(config.lines)
                               if line.name == row.get("line")), 0)
            summaries.append({
                "scenario": scenario,
                "reference": format_reference(result.reference),
                "reference_digits": result.reference,
                "line": row.get("line"),
                "caller_number": row.get("caller_number"),
                "caller_name": row.get("caller_name"),
                "outcome": result.outcome,
                "recording_decision": result.recording_decision,
                "notice_completed": result.notice_completed,
                "notice_version": row.get("notice_version"),
                "notice_form": row.get("notice_form"),
                "notice_layers": json.loads(row.get("notice_layers") or "[]"),
                # Off-hook → the caller and the shop can speak to each other (issue: "a person
                # in seconds"); None when nobody answered.
                "time_to_human_s": (round(bridged_t - row["answer_at"], 2)
                                    if bridged_t is not None and row.get("answer_at") else None),
                "recording_path": result.recording.path if result.recording else None,
                "recording_sha256": result.recording.sha256 if result.recording else None,
                "recording_bytes": result.recording.bytes if result.recording else None,
                "recording_duration_s": (result.recording.duration_s if result.recording
                                         else None),
                "duration_s": result.duration_s,
                "db_path": str(config.db_path),
                "modem": {"device": paths[line_index], "profile": profile,
                          "commands": len(servers[line_index].sim.commands),
                          "full_duplex": servers[line_index].sim.profile.full_duplex,
                          "duplex_evidence": getattr(app.lines[line_index].modem,
                                                     "duplex_evidence", None),
                          # The voice data states the call used, in order (+VTR, or
                          # +VTX/+VRX on a half-duplex modem).
                          "voice_states": [c for c in servers[line_index].sim.commands
                                           if c in ("AT+VTR", "AT+VTX", "AT+VRX")]},
                "echo": {"line": dataclasses.asdict(line_echo) if line_echo else None,
                         "handset": (dataclasses.asdict(handset_echo) if handset_echo
                                     else None)},
                "wall_time_s": round(time.monotonic() - t_start, 2),
                # How much of what the line sent the caller actually heard as sound.
                "caller_heard_loud_s": _loud_seconds(callers[line_index].heard
                                                     if line_index < len(callers) else []),
                "speech_warning": app.speech_warning,
                "events": [
                    {"t": round(e["t"] - t0, 3), "state": e["state"], "detail": e["detail"]}
                    for e in events
                ],
                "pins": pins,
            })
        return DemoResult(summary=summaries[0], timeline=world.timeline, summaries=summaries)
    finally:
        await app.stop()
        for server in servers:
            await server.stop()
        factory.close()


def _loud_seconds(chunks: list[Any]) -> float:
    """Seconds of 20 ms frames above -40 dBFS in what a simulated caller heard."""
    import numpy as np

    if not chunks:
        return 0.0
    audio = np.concatenate(chunks).astype(np.float64) / 32767.0
    n = len(audio) // 160
    rms = np.sqrt(np.mean(audio[: n * 160].reshape(n, 160) ** 2, axis=1))
    return round(float(np.count_nonzero(rms > 10 ** (-40 / 20))) * 0.02, 2)


def _pin_history(factory: Any, pin_number: int) -> list[tuple[float, Any]]:
    """(seconds since the pin was set up, state) for every change of a mock pin.

    gpiozero's MockPin stores each state with the time since the *previous* change; the
    running sum gives a timeline.
    """
    pin = factory.pin(pin_number)
    t = 0.0
    history = []
    for state in pin.states:
        t += state.timestamp
        history.append((t, state.state))
    return history
