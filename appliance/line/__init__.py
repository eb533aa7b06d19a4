"""FXO: the V.253 voice-modem driver (codecs → AT link → modem operations) and its emulator."""
