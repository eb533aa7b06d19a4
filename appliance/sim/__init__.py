"""The simulated world: scripted callers and a simulated shop assistant, for demos and tests."""
