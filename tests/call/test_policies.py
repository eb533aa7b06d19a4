"""The call policies come from the configuration alone: no defaults of their own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appliance.call.flow import CallPolicy
from appliance.call.outbound_flow import MAX_DIALLED_DIGITS, OutboundPolicy
from appliance.config import load_config

from ..policies import default_config

POLICIES = (CallPolicy, OutboundPolicy)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda cls: cls.__name__)
def test_policies_have_no_field_defaults(policy: type) -> None:
    defaulted = [f.name for f in dataclasses.fields(policy)
                 if f.default is not dataclasses.MISSING
                 or f.default_factory is not dataclasses.MISSING]
    assert defaulted == []


def test_the_call_policy_follows_every_key(tmp_path: Path) -> None:
    # Every value differs from the packaged default, so a field copied from the wrong key
    # or left at some value of its own shows.
    path = tmp_path / "config.toml"
    path.write_text(
        '[notice]\nreturning_caller_days = 7\n'
        '[call]\nring_during_notice = false\noptout_key = "8"\nrepeat_key = "#"\n'
        'details_key = "5"\nreference_at_end = false\nagent_timeout_s = 11.0\n'
        'voicemail = false\nvoicemail_max_s = 12.0\nmax_call_s = 13.0\n'
        'whisper_reference = true\nhold_max_s = 14.0\nhold_reassure_s = 15.0\n'
        'silence_hangup_s = 16.0\n'
        '[[lines]]\nname = "a"\ndevice = "sim://"\ncountry_code = "51"\n'
        '[[lines]]\nname = "b"\ndevice = "sim://"\ncountry_code = "51"\n',
        encoding="utf-8")
    config = load_config(path, state_dir=tmp_path)
    policy = CallPolicy.from_config(config)
    assert policy == CallPolicy(
        ring_during_notice=False, optout_key="8", repeat_key="#", details_key="5",
        reference_at_end=False, returning_caller_days=7, agent_timeout_s=11.0, voicemail=False,
        voicemail_max_s=12.0, max_call_s=13.0, whisper_reference=True, hold_max_s=14.0,
        hold_reassure_s=15.0, whisper_line=True, silence_hangup_s=16.0, record=True)
    assert CallPolicy.from_config(default_config()).whisper_line is False  # one line


def test_the_outbound_policy_follows_every_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[device]\nlanguage = "en"\n[call]\nmax_call_s = 13.0\noptout_key = "8"\n'
        'details_key = "5"\n'
        '[outbound]\ninterdigit_timeout_s = 1.5\noffhook_warning_s = 2.5\nhowler_s = 3.5\n'
        'no_answer_s = 4.5\nfailure_listen_s = 5.5\nrecord = true\nrecord_code = "*7"\n',
        encoding="utf-8")
    policy = OutboundPolicy.from_config(load_config(path, state_dir=tmp_path))
    assert policy == OutboundPolicy(
        interdigit_timeout_s=1.5, offhook_warning_s=2.5, howler_s=3.5, no_answer_s=4.5,
        failure_listen_s=5.5, record=True, record_code="*7", max_digits=MAX_DIALLED_DIGITS,
        max_call_s=13.0, optout_key="8", details_key="5", language="en")

