"""Per-call audio routing, clocked by the line.

The modem's codec clock is the master clock of a call: every 20 ms frame received from the
line (``on_line_audio``) moves exactly one frame everywhere else — one frame to the line
(prompt, ringback or the shop's voice), one to the earpiece (whisper, tone or the caller's
voice) and one stereo frame to the recorder; the handset's capture is taken at the same tick
(``take_from_mouthpiece``: the handset's card hands over its freshest frame then, and wakes
the loop for nothing else while a line drives). Clocking transmit from receive keeps the modem's
buffer level constant for hours (a host-clock sender drifts by the two crystals' difference,
≈ 180 ms/h at 50 ppm) and keeps the two recorded channels sample-aligned by construction. The
handset's card runs on its own clock; its capture meets the line's in the card's ring
(docs/audio.md §6), and frames it hands over by itself wait in a small jitter buffer.

Two echo cancellers per call (:mod:`appliance.audio.echo`) take out what the hybrids return:
the line's (the shop's voice coming back in the caller channel) and the SLIC's (the caller's
voice coming back in the mouthpiece). Each works on the frame as it arrives, against the frame
sent at the same time, before anything is forwarded, recorded or watched: no added latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from appliance.audio.buffers import ClipPlayer, FrameSource, JitterBuffer, Silence
from appliance.audio.dtmf import DtmfDetector
from appliance.audio.echo import EchoCancellerUnavailable, SpeexEchoCanceller
from appliance.audio.pcm import FRAME_MS, FRAME_SAMPLES
from appliance.audio.tones import ToneGenerator, ToneZone
from appliance.call.events import (
    CallerHungUp,
    CallEvent,
    KeyPressed,
    PlaybackDone,
    RecordingFailed,
)
from appliance.call.flow import RecordingInfo
from appliance.errors import StoreError
from appliance.line.progress import BusyCadenceDetector
from appliance.store.recorder import Recorder

if TYPE_CHECKING:
    from appliance.config import Config, LineConfig

_LOGGER = logging.getLogger(__name__)

#: The same digit from the modem's report and the in-band detector within this window is one key.
DTMF_DEDUP_S: Final = 0.6
#: A frame quieter than this (RMS, dBFS) counts as silence for the end-of-call watch.
SILENCE_DBFS: Final = -50.0
#: 20 ms frames per second.
FRAMES_PER_S: Final = 50
#: Level at which a shop that lifted during the notice hears it (monitor_line): quiet enough
#: to be plainly "not yet through", loud enough to follow the words and note the reference.
MONITOR_GAIN_DB: Final = -14.0
_MONITOR_GAIN: Final = 10 ** (MONITOR_GAIN_DB / 20)


#: Frames handed to the recorder at once (200 ms). The recorder's thread then wakes, and
#: libsndfile rewrites the WAV header, five times a second instead of fifty; no path anyone
#: hears waits for it. A crash loses at most this much more audio than the writer's own fsync
#: interval (the staged frames never reached the file).
RECORD_HANDOFF_FRAMES: Final = 10
#: Frames the in-band DTMF detector is given at once (40 ms) before the shop answers: half
#: its calls, each a chain of numpy operations, for a key reported at most one frame later
#: (a key needs ≥ 25.5 ms of tone to count at all, audio/dtmf.py).
DTMF_BATCH_FRAMES: Final = 2
#: Sum of squares (int16 units) of a frame at SILENCE_DBFS RMS.
_QUIET_SUM_SQ: Final = FRAME_SAMPLES * (32767.0 * 10 ** (SILENCE_DBFS / 20)) ** 2


def _quiet(frame: np.ndarray) -> bool:
    x = frame.astype(np.float32)
    return float(x @ x) < _QUIET_SUM_SQ


def _canceller(enabled: bool, reference: str, path: str) -> SpeexEchoCanceller | None:
    if not enabled:
        return None
    try:
        return SpeexEchoCanceller()
    except EchoCancellerUnavailable as exc:
        _LOGGER.warning("call %s: %s echo not cancelled: %s", reference, path, exc)
        return None


class _ToneSource:
    def __init__(self, generator: ToneGenerator) -> None:
        self._gen = generator

    def read(self, n: int) -> np.ndarray:
        return self._gen.next_frame(n)


class CallMedia:
    """Audio routing for one call (implements :class:`appliance.call.flow.MediaPort`).

    All methods run on the event loop. ``send_to_line`` is the modem's ``send_audio``;
    ``play_to_earpiece`` the handset backend's ``play``. With ``hear_hang_up`` the line
    audio is watched for the exchange's busy tone, which posts
    ``CallerHungUp("busy (in-band)")`` once: an answered call's backstop for modems that
    report the hang-up late or never (docs/line.md). A dialled call has its own detector.
    """

    def __init__(
        self,
        reference: str,
        *,
        send_to_line: Callable[[np.ndarray], None],
        play_to_earpiece: Callable[[np.ndarray], None],
        events: asyncio.Queue[CallEvent],
        tone_zone: ToneZone,
        recordings_dir: Path,
        codec: str,
        fsync_interval_s: float,
        tx_lead_frames: int,
        line_echo_cancel: bool,
        handset_echo_cancel: bool,
        hear_hang_up: bool = False,
        take_from_mouthpiece: Callable[[], None] | None = None,
    ) -> None:
        """Route one call's audio; the daemon builds it with :meth:`for_line`.

        ``take_from_mouthpiece`` is called at each line frame, before the mouthpiece's frame is
        read: the handset backend's ``pull`` (when this call has the handset), which hands the
        frame to :meth:`on_handset_capture` there and then. None: frames come only by
        :meth:`on_handset_capture`.

        ``codec``, ``fsync_interval_s``, ``tx_lead_frames`` and the two ``*_echo_cancel``
        switches have no defaults here: they are the configuration's (``recording.*``,
        ``lines[].tx_lead_ms``, ``lines[].echo_cancel``, ``handset.echo_cancel``).
        ``tx_lead_frames`` frames are kept ahead in the modem's transmit buffer: transmit is
        clocked by receive, so the lead only has to cover the host's turnaround from a received
        frame to the next sent one (≈ 1 ms on a pty); every frame of lead is 20 ms of added
        shop→caller delay (docs/design.md §9 target: ≤ 30 ms).
        """
        self.reference = reference
        self._send = send_to_line
        self._earpiece = play_to_earpiece
        self._pull = take_from_mouthpiece
        self._events = events
        self._zone = tone_zone
        self._recordings_dir = recordings_dir
        self._codec = codec
        self._fsync_interval_s = fsync_interval_s
        self._tx_lead_frames = tx_lead_frames
        self._line_source: FrameSource = Silence()
        self._handset_source: FrameSource = Silence()
        self._capture = JitterBuffer(name=f"call {reference}: handset capture")
        self._bridged = False
        self._recorder: Recorder | None = None
        self._recording_failed = False
        self._dtmf = DtmfDetector()
        # The frames received (and, without a line canceller, sent) since the detector was
        # last fed: DTMF_BATCH_FRAMES of them, filled in place.
        self._dtmf_rx = np.zeros(DTMF_BATCH_FRAMES * FRAME_SAMPLES, dtype=np.int16)
        self._dtmf_tx = np.zeros(DTMF_BATCH_FRAMES * FRAME_SAMPLES, dtype=np.int16)
        self._dtmf_frames = 0
        self._last_key: tuple[str, float] = ("", 0.0)
        self._primed = False
        self._whisper: ClipPlayer | None = None
        self._monitor = False
        self._last_tx = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._silence_limit = 0  # frames; 0 = not watching
        # The caller's hang-up heard in the line audio: the exchange's busy (or, later, dial)
        # tone. Modems report busy only after recognising the cadence, some never
        # (docs/line.md); this ends the call whichever comes first.
        self._far_end = BusyCadenceDetector(tone_hz=tone_zone.busy.freqs_hz[0])
        self._far_end_gone = not hear_hang_up
        self._quiet_frames = 0
        self._host_clocked_tx = False
        self._line_aec = _canceller(line_echo_cancel, reference, "line")
        self._handset_aec = _canceller(handset_echo_cancel, reference, "handset")
        self._last_earpiece = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        # Stereo frames staged for the recorder (RECORD_HANDOFF_FRAMES of them), filled in
        # place: one hand-off and one copy per batch, none per frame.
        self._staged = np.zeros((RECORD_HANDOFF_FRAMES * FRAME_SAMPLES, 2), dtype=np.int16)
        self._staged_frames = 0
        self._silent = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        #: Set whenever something is given to the line (a prompt, a tone): a half-duplex line
        #: waits on it to leave its receive state (:mod:`appliance.daemon.halfduplex`).
        self.line_wanted = asyncio.Event()
        self.stats: dict[str, int] = {"rx_frames": 0, "tx_frames": 0, "recorded_frames": 0}

    @classmethod
    def for_line(
        cls,
        reference: str,
        config: Config,
        line: LineConfig,
        *,
        send_to_line: Callable[[np.ndarray], None],
        play_to_earpiece: Callable[[np.ndarray], None],
        events: asyncio.Queue[CallEvent],
        tone_zone: ToneZone,
        hear_hang_up: bool = False,
        take_from_mouthpiece: Callable[[], None] | None = None,
    ) -> CallMedia:
        """A call's media on ``line`` as ``config`` says: the one place an inbound or an
        outbound call takes its codec, fsync interval, transmit lead and echo cancellers."""
        return cls(
            reference,
            send_to_line=send_to_line,
            play_to_earpiece=play_to_earpiece,
            events=events,
            tone_zone=tone_zone,
            recordings_dir=config.recordings_dir,
            codec=config.recording.codec,
            fsync_interval_s=config.recording.fsync_interval_s,
            tx_lead_frames=line.tx_lead_ms // FRAME_MS,
            line_echo_cancel=line.echo_cancel,
            handset_echo_cancel=config.handset.echo_cancel,
            hear_hang_up=hear_hang_up,
            take_from_mouthpiece=take_from_mouthpiece,
        )

    # -- clocked by the line ----------------------------------------------------------------

    def prime(self) -> None:
        """Send the lead frames right after duplex starts (first notice byte without delay)."""
        if not self._primed:
            self._primed = True
            for _ in range(self._tx_lead_frames):
                self._send(self._line_source.read(FRAME_SAMPLES))
                self.stats["tx_frames"] += 1

    def use_host_clocked_transmit(self) -> None:
        """The line cannot send and receive at once (a modem without ``+VTR``).

        From now on :meth:`on_line_audio` (the modem's ``+VRX`` state) sends nothing and
        leaves what the line should hear untouched; :meth:`transmit_frame` takes it instead,
        paced by the half-duplex line (``+VTX`` state).
        """
        self._host_clocked_tx = True

    @property
    def line_busy(self) -> bool:
        """True while the caller has something to hear (a prompt not yet read out, a tone)."""
        source = self._line_source
        return not isinstance(source, Silence) and not getattr(source, "finished", False)

    def transmit_frame(self) -> np.ndarray:
        """The next 20 ms frame for a line in its transmit-only state (host clocked).

        Nothing is received meanwhile, so a recording running now gets silence in both
        channels: its timeline stays the call's timeline.
        """
        tx = self._line_source.read(FRAME_SAMPLES)
        self._last_tx = tx
        self.stats["tx_frames"] += 1
        if self._recorder is not None:
            self._record(self._silent, self._silent)
        return tx

    def on_line_audio(self, frame: np.ndarray) -> None:
        """One 20 ms frame from the caller: move one frame along every path."""
        self.stats["rx_frames"] += 1
        if self._host_clocked_tx:
            self._on_received_only(frame)
            return
        sent_before = self._last_tx
        if self._pull is not None:
            # The handset's freshest frame, into the capture buffer now. Anything there before
            # was handed over by the card's own clock while no line took the capture (a
            # pause): older than this frame, it would stand a frame of latency for a second.
            if len(self._capture):
                self._capture.clear()
            self._pull()
        shop = self._capture.read(FRAME_SAMPLES)
        if self._handset_aec is not None:
            # The mouthpiece returns what the earpiece played (the SLIC's hybrid).
            shop = self._handset_aec.process(shop, self._last_earpiece)
        tx = shop if self._bridged else self._line_source.read(FRAME_SAMPLES)
        self._last_tx = tx
        self._send(tx)
        self.stats["tx_frames"] += 1
        if self._line_aec is not None:
            # The line returns what we send (the modem's hybrid): the notice before the shop
            # answers, so the filter has converged by the time the two talk.
            frame = self._line_aec.process(frame, tx)
        if not self._bridged:
            # Keys matter before the shop answers (opt-out, repeat); while the two talk, the
            # flow ignores them, so the detector (≈ 1 % of a core) is skipped. On the
            # cancelled frame the prompt's echo is gone and the detector needs no echo gate
            # (it missed no key and took no false one under prompts, where the gate missed up
            # to 7 of 31 quiet keys: docs/performance.md). Without a canceller, the echo gate:
            # a key counts only when clearly louder than the prompt's echo could be
            # (audio/dtmf.py, trans-hybrid loss ≥ 6 dB).
            self._detect_keys(frame, sent_before)
        if self._bridged:
            earpiece = frame
        elif self._monitor and not self._handset_busy():
            # The shop lifted during the notice: it hears what the caller hears, quietly.
            earpiece = (tx.astype(np.float32) * _MONITOR_GAIN).astype(np.int16)
        else:
            earpiece = self._handset_source.read(FRAME_SAMPLES)
        if self._whisper is not None:
            # Only the shop hears it: mixed into the earpiece, never sent to the line.
            mixed = earpiece.astype(np.int32) + self._whisper.read(FRAME_SAMPLES)
            earpiece = np.clip(mixed, -32768, 32767).astype(np.int16)
            if self._whisper.finished:
                self._whisper = None
        self._earpiece(earpiece)
        self._last_earpiece = earpiece
        if self._recorder is not None:
            # The shop is in this call only once bridged: before that the mouthpiece may be
            # another call's (a held call gets the handset the moment the other one ends,
            # while the shop may still be speaking), so its channel holds silence.
            self._record(frame, shop if self._bridged else self._silent)
        self._watch(frame, shop)

    def _detect_keys(self, frame: np.ndarray, sent: np.ndarray) -> None:
        """Stage ``frame`` (and ``sent``, for the echo gate) for the DTMF detector; feed it
        every DTMF_BATCH_FRAMES frames."""
        n = self._dtmf_frames
        self._dtmf_rx[n * FRAME_SAMPLES : (n + 1) * FRAME_SAMPLES] = frame
        cancelled = self._line_aec is not None
        if not cancelled:
            self._dtmf_tx[n * FRAME_SAMPLES : (n + 1) * FRAME_SAMPLES] = sent
        n += 1
        if n == DTMF_BATCH_FRAMES:
            n = 0
            # The detector copies what it is given: the staging buffers are reused.
            for digit in self._dtmf.feed(self._dtmf_rx,
                                         reference=None if cancelled else self._dtmf_tx):
                self.key_reported(digit, "inband")
        self._dtmf_frames = n

    def _on_received_only(self, frame: np.ndarray) -> None:
        # Half duplex, receive state: the caller (and whoever else is on the copper) is
        # heard and recorded; nothing can be sent, and the handset is not part of the call.
        # Keys matter only during prompts, i.e. in the transmit state, where the modem's own
        # <DLE> reports are all there is; the in-band detector is not run here.
        silent = self._silent
        if self._recorder is not None:
            self._record(frame, silent)
        self._watch(frame, silent)

    def _record(self, caller: np.ndarray, shop: np.ndarray) -> None:
        """One stereo frame to the recorder (staged, handed over every
        RECORD_HANDOFF_FRAMES); a writer that has failed is reported once."""
        recorder = self._recorder
        assert recorder is not None
        if recorder.error is None:
            n = self._staged_frames
            rows = self._staged[n * FRAME_SAMPLES : (n + 1) * FRAME_SAMPLES]
            rows[:, 0] = caller
            rows[:, 1] = shop
            self._staged_frames = n + 1
            self.stats["recorded_frames"] += 1
            if n + 1 == RECORD_HANDOFF_FRAMES:
                self._hand_off(recorder)
        elif not self._recording_failed:
            # The writer logged it; the flow turns the recording LED off and carries on.
            self._recording_failed = True
            self._events.put_nowait(RecordingFailed(str(recorder.error)))

    def _hand_off(self, recorder: Recorder) -> None:
        """Give the staged frames to the recorder (it copies them) and start a new batch."""
        if self._staged_frames and recorder.error is None:
            recorder.write(self._staged[: self._staged_frames * FRAME_SAMPLES])
        self._staged_frames = 0

    def _watch(self, frame: np.ndarray, shop: np.ndarray) -> None:
        """The end-of-call watches on the line's frame: silence (when asked) and the busy
        tone, sharing the frame's float32 copy and level."""
        watch_silence, watch_far_end = bool(self._silence_limit), not self._far_end_gone
        if not (watch_silence or watch_far_end):
            return
        x = frame.astype(np.float32)
        sum_sq = float(x @ x)
        if watch_silence:
            self._watch_silence(sum_sq < _QUIET_SUM_SQ, shop)
        if not watch_far_end:
            return
        heard = (self._far_end.feed_float32(x, sum_sq) if len(x) == FRAME_SAMPLES
                 else self._far_end.feed(frame))
        if heard:
            self._far_end_gone = True
            _LOGGER.info("call %s: busy tone heard on the line", self.reference)
            self._events.put_nowait(CallerHungUp("busy (in-band)"))

    def _watch_silence(self, line_quiet: bool, shop: np.ndarray) -> None:
        # Some chips ignore +VSD and report no hang-up at all (docs/v253.md §10 #3): prolonged
        # silence on the line itself (and from the shop, when bridged) ends the call.
        if line_quiet and (not self._bridged or _quiet(shop)):
            self._quiet_frames += 1
            if self._quiet_frames == self._silence_limit:
                self._events.put_nowait(CallerHungUp("silence"))
        else:
            self._quiet_frames = 0

    def on_handset_capture(self, frame: np.ndarray) -> None:
        self._capture.push(frame)

    def key_reported(self, digit: str, source: str) -> None:
        """A DTMF key from the modem or the in-band detector; duplicates are merged."""
        now = time.monotonic()
        last_digit, last_t = self._last_key
        self._last_key = (digit, now)
        if digit == last_digit and now - last_t < DTMF_DEDUP_S:
            return
        self._events.put_nowait(KeyPressed(digit, source))

    @property
    def echo_status(self) -> dict[str, float | bool | None]:
        """Each canceller's current ERLE (dB; None before the far end has spoken) and
        whether it runs (``appliance status``)."""
        line, handset = self._line_aec, self._handset_aec
        return {
            "line_echo_cancel": line is not None,
            "line_erle_db": line.erle_db if line is not None else None,
            "handset_echo_cancel": handset is not None,
            "handset_erle_db": handset.erle_db if handset is not None else None,
        }

    @property
    def capture_stats(self) -> dict[str, int]:
        return {"underruns": self._capture.underruns, "overruns": self._capture.overruns,
                "shed": self._capture.shed}

    # -- MediaPort --------------------------------------------------------------------------

    def _done(self, token: str) -> Callable[[], None]:
        return lambda: self._events.put_nowait(PlaybackDone(token))

    def play_to_line(self, token: str, *clips: np.ndarray) -> None:
        """Replace what the caller hears by ``clips``; ``PlaybackDone(token)`` at their end."""
        player = ClipPlayer()
        self._line_source = player
        self._queue(player, token, clips)

    def queue_to_line(self, token: str, *clips: np.ndarray) -> None:
        """Play ``clips`` right after the prompt playing now, in the same player (no gap
        between them); ``PlaybackDone(token)`` when they have been played out."""
        source = self._line_source
        if isinstance(source, ClipPlayer) and not source.finished:
            self._queue(source, token, clips)
        else:
            self.play_to_line(token, *clips)

    def _queue(self, player: ClipPlayer, token: str, clips: tuple[np.ndarray, ...]) -> None:
        for clip in clips[:-1]:
            player.append(clip)
        player.append(clips[-1] if clips else np.zeros(0, dtype=np.int16),
                      on_done=self._done(token))
        self.line_wanted.set()

    def monitor_line(self, on: bool) -> None:
        """While not bridged, the earpiece hears what the line is sent, at
        :data:`MONITOR_GAIN_DB` (after anything played to the handset itself)."""
        self._monitor = on

    def _handset_busy(self) -> bool:
        source = self._handset_source
        return not isinstance(source, Silence) and not getattr(source, "finished", False)

    def line_tone(self, kind: str) -> None:
        if kind == "silence":
            self._line_source = Silence()
        else:
            self._line_source = _ToneSource(ToneGenerator(getattr(self._zone, kind)))
            self.line_wanted.set()

    def play_to_handset(self, token: str, *clips: np.ndarray) -> None:
        self._handset_source = ClipPlayer(*clips, on_done=self._done(token))

    def handset_tone(self, kind: str) -> None:
        if kind == "silence":
            self._handset_source = Silence()
        else:
            self._handset_source = _ToneSource(ToneGenerator(getattr(self._zone, kind)))

    def watch_silence(self, seconds: float) -> None:
        """End the call (``CallerHungUp("silence")``) after ``seconds`` of silence; 0 = off."""
        self._silence_limit = int(seconds * FRAMES_PER_S)
        self._quiet_frames = 0

    def whisper_to_handset(self, clip: np.ndarray) -> None:
        """Say ``clip`` into the shop's earpiece over whatever it hears (the caller does not)."""
        self._whisper = ClipPlayer(clip)

    def bridge(self) -> None:
        self._capture.clear()
        self._bridged = True

    def unbridge(self) -> None:
        self._bridged = False

    async def start_recording(self) -> None:
        from datetime import datetime

        self._staged_frames = 0
        self._recorder = Recorder(
            self._recordings_dir,
            self.reference,
            now=datetime.now().astimezone(),
            fsync_interval_s=self._fsync_interval_s,
        )

    @property
    def recording(self) -> bool:
        return self._recorder is not None

    async def finish_recording(self) -> RecordingInfo | None:
        """Finalize the recording; None when there is none or it cannot be finalized now
        (a full disk: the partial is kept, and finalized at the daemon's next start)."""
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return None
        self._hand_off(recorder)
        try:
            result = await recorder.finalize(self._codec)
        except StoreError as exc:
            _LOGGER.error("call %s: the recording cannot be finalized now (%s); its partial "
                          "is kept and finalized at the next start", self.reference, exc)
            return None
        return RecordingInfo(
            path=str(result.path),
            sha256=result.sha256,
            bytes=result.bytes,
            duration_s=result.duration_s,
        )

    async def discard_recording(self) -> None:
        recorder, self._recorder = self._recorder, None
        self._staged_frames = 0
        if recorder is not None:
            await recorder.abort()
