"""The call policies of the default configuration, for tests that drive a flow directly.

The policies have no defaults of their own (the configuration is the one source), so a test
starts from what ``appliance/defaults.toml`` says and changes only the fields it is about.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

from appliance.call.flow import CallPolicy
from appliance.call.outbound_flow import OutboundPolicy
from appliance.config import Config, load_config


@functools.cache
def default_config() -> Config:
    """The packaged defaults alone (an empty file over them, whatever the environment says)."""
    return load_config(Path(os.devnull))


def call_policy(**changes: Any) -> CallPolicy:
    """The default configuration's inbound policy with ``changes`` applied."""
    return dataclasses.replace(CallPolicy.from_config(default_config()), **changes)


def outbound_policy(**changes: Any) -> OutboundPolicy:
    """The default configuration's outbound policy with ``changes`` applied."""
    return dataclasses.replace(OutboundPolicy.from_config(default_config()), **changes)
