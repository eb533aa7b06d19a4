"""The emulated voice modem: the DCE side of the same V.253 link (ships in the product).

:class:`SimModem` speaks the dialects of the modems we target (docs/v253.md §11 checklist,
:mod:`~appliance.sim.modem.profiles`). It is assembled from one module per concern, each a
mixin over the shared :class:`~appliance.sim.modem.state.SimState`:

* :mod:`~appliance.sim.modem.at` — the AT interpreter (host bytes in, result codes out);
* :mod:`~appliance.sim.modem.clock` — the voice clock (20 ms frames each way while off-hook);
* :mod:`~appliance.sim.modem.network` — the telephone network (ringing, dialling, progress
  tones, the line's audio; constants and the far end in :mod:`~appliance.sim.modem.exchange`);
* :mod:`~appliance.sim.modem.triggers` — what a scripted caller, a test or a fault does.

A host reaches it only over a link: a pty (:mod:`appliance.sim.modem.pty`) or the in-process
loopback behind ``sim://`` URLs (:mod:`appliance.sim.modem.link`).

Written by hand: no library emulates a V.253 modem.
"""

from __future__ import annotations

from appliance.sim.modem.at import AtInterpreter
from appliance.sim.modem.clock import VoiceClock
from appliance.sim.modem.network import Network
from appliance.sim.modem.triggers import Triggers

__all__ = ["SimModem"]


class SimModem(Triggers, AtInterpreter, VoiceClock, Network):
    """The DCE side of a V.253 voice modem.

    Runs on the event loop; host bytes come in via :meth:`data_received`; bytes to the host
    go through the writer set by :meth:`attach`. Triggers (:meth:`ring`, :meth:`press_key`,
    :meth:`remote_hangup`, :meth:`stall`, :meth:`unplug` …) script the caller and faults;
    observation attributes (:attr:`commands`, :attr:`played`, :attr:`off_hook`,
    :attr:`first_tx_byte_at`) serve assertions. Constructor arguments: see
    :class:`~appliance.sim.modem.state.SimState`.
    """
