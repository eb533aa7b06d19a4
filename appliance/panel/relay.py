"""The power-fail bypass relay (hw/ag1171.md §4).

A normally-closed relay connects the landline straight to the shop's phone. The daemon
energises its coil (through a transistor; a Pi GPIO cannot drive a coil) only while it is
healthy, so power loss, a crash, a watchdog restart or a fault that stops the box answering
all leave the shop with a plain working phone.
"""

from __future__ import annotations

import logging
from typing import Any

from gpiozero import DigitalOutputDevice

_LOGGER = logging.getLogger(__name__)


class BypassRelay:
    """Holds the bypass relay energised while :meth:`set_healthy` says so.

    ``energised`` True = the box is in the line (calls go through the appliance);
    False = bypassed (line connected straight to the phone).
    """

    def __init__(self, pin: int, *, pin_factory: Any) -> None:
        self._pin = pin
        self._pin_factory = pin_factory
        self._device: DigitalOutputDevice | None = None
        self.energised = False

    def start(self) -> None:
        # initial_value=False: the phone stays on the line until the daemon proves healthy.
        self._device = DigitalOutputDevice(self._pin, initial_value=False,
                                           pin_factory=self._pin_factory)

    def set_healthy(self, healthy: bool) -> None:
        if self._device is None or healthy == self.energised:
            return
        self.energised = healthy
        if healthy:
            self._device.on()
            _LOGGER.info("bypass relay energised: calls go through the appliance")
        else:
            self._device.off()
            _LOGGER.warning("bypass relay released: the phone is connected straight to the line")

    def close(self) -> None:
        """Release the relay and the pin (the coil drops: line straight to the phone)."""
        if self._device is not None:
            self._device.off()
            self._device.close()
            self._device = None
        self.energised = False
