"""FXO: the V.253 voice-modem driver (codecs → AT link → modem operations) and its emulator.

A bare ``§N`` in these modules cites docs/v253.md; ``quirk #N`` a row of docs/modem-quirks.md.
"""
