"""Audio: endpoints, PCM conversions, tones, DTMF, jitter buffers, bridge."""
