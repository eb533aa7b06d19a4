"""``appliance demo``: one whole call through the real daemon on simulated hardware.

The line is the modem emulator served on a real pty and opened by pyserial — the same code
path as a USB modem. The handset is the AG1171 driver on gpiozero MockFactory pins with the
simulated shop assistant on them, and the in-memory handset audio. Everything else (store,
recorder, prompts, call flow) is the product itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from appliance.audio.backend import SimHandsetAudio
from appliance.call.reference import format_reference
from appliance.config import Config, load_config
from appliance.daemon.app import Application
from appliance.line.sim import PtyModemServer
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


@dataclass
class DemoResult:
    summary: dict[str, Any]
    timeline: list[tuple[float, str, str, str]] = field(default_factory=list)


def demo_config(state_dir: Path, scenario: str, device: str,
                extra: dict[str, Any] | None = None) -> Config:
    """The demo's configuration: packaged defaults, simulated hardware, short waits."""
    overrides: dict[str, Any] = {
        "lines": [{"name": "main", "device": device, "country_code": "51"}],
        "handset": {"audio": "sim://"},
        "gpio": {"pin_factory": "mock"},
        # The voicemail scenario should not wait the production 30 s for nobody.
        "call": {"agent_timeout_s": 8.0, "voicemail_max_s": 20.0},
    }
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
) -> DemoResult:
    """Run one simulated call end to end and return its summary and timeline."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    world = World(on_entry=on_entry)
    speech_texts = dict(LINES_HU)
    speech = await asyncio.to_thread(
        lambda: {k: render_speech(v, f0_hz=110.0 if k.startswith("caller") else 190.0,
                                  seed=len(k)) for k, v in speech_texts.items()})
    server = PtyModemServer(profile=profile)
    path = await server.start()
    world.log("sim", "modem emulator on pty", path)
    config = demo_config(state_dir, scenario, path, config_extra)
    factory = MockFactory(pin_class=MockPWMPin)
    handset = SimHandsetAudio()
    app = Application(config, pin_factory=factory, handset_audio=handset)
    app.observers.append(world.observe_call)
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
            lift_after_rings=None if scenario == "voicemail" else LIFT_AFTER_RINGS,
            speech=speech,
        )
        handset.connect_user(agent.mouth, agent.ear)
        caller = ScriptedCaller(server.sim, world, scenario, speech=speech,
                                optout_key=config.call.optout_key)
        actors = [
            asyncio.create_task(caller.run(), name="sim-caller"),
            asyncio.create_task(agent.run(), name="sim-agent"),
        ]
        try:
            async with asyncio.timeout(DEMO_TIMEOUT_S):
                result = await app.completed.get()
                # The people finish their last act (the shop puts the phone down) promptly.
                await asyncio.wait(actors, timeout=ACTORS_GRACE_S)
        finally:
            for task in actors:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        row = app.store.get_call(result.reference) or {}
        events = app.store.events(result.reference)
        pins = {
            name: [(round(t, 3), bool(s)) for t, s in _pin_history(factory, pin)]
            for name, pin in (("ring_rm", config.handset.rm_pin),
                              ("led_recording", config.panel.recording_pin),
                              ("led_line", config.panel.line_pin))
        }
        t0 = events[0]["t"] if events else 0.0
        summary = {
            "scenario": scenario,
            "reference": format_reference(result.reference),
            "reference_digits": result.reference,
            "caller_number": row.get("caller_number"),
            "caller_name": row.get("caller_name"),
            "outcome": result.outcome,
            "recording_decision": result.recording_decision,
            "notice_completed": result.notice_completed,
            "notice_version": row.get("notice_version"),
            "recording_path": result.recording.path if result.recording else None,
            "recording_sha256": result.recording.sha256 if result.recording else None,
            "recording_bytes": result.recording.bytes if result.recording else None,
            "recording_duration_s": result.recording.duration_s if result.recording else None,
            "duration_s": result.duration_s,
            "db_path": str(config.db_path),
            "modem": {"device": path, "profile": profile,
                      "commands": len(server.sim.commands)},
            "wall_time_s": round(time.monotonic() - t_start, 2),
            "speech_warning": app.speech_warning,
            "events": [
                {"t": round(e["t"] - t0, 3), "state": e["state"], "detail": e["detail"]}
                for e in events
            ],
            "pins": pins,
        }
        return DemoResult(summary=summary, timeline=world.timeline)
    finally:
        await app.stop()
        await server.stop()
        factory.close()


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
