"""rlhf.core.runtime: a stage's accelerator does not inherit the mixed precision of an earlier stage in the process."""
from __future__ import annotations

import torch


def test_an_earlier_bf16_accelerator_does_not_leak_into_the_next_stage():
    from accelerate import Accelerator

    from rlhf.core.runtime import fresh_accelerator_state, make_accelerator

    fresh_accelerator_state()  # whatever the tests before this one left
    Accelerator(cpu=True, mixed_precision="bf16")  # what a TRL trainer (SFT, DPO) leaves in the process
    try:
        acc = make_accelerator()
        assert acc.mixed_precision == "no"  # we decide precision ourselves (use_bf16), per stage
        assert not torch.is_autocast_enabled("cpu")
    finally:
        fresh_accelerator_state()


def test_autocast_is_bf16_when_asked_and_nothing_otherwise():
    """rlhf.core.runtime.autocast: the one autocast every stage (eval, judge-free, SFT forgetting, reward, RL) uses."""
    from rlhf.core.runtime import autocast

    cpu = torch.device("cpu")
    with autocast(cpu, bf16=True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, bf16=False):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
