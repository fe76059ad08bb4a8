"""rlhf.runtime: a stage's accelerator does not inherit the mixed precision of an earlier stage in the process."""
from __future__ import annotations

import torch


def test_an_earlier_bf16_accelerator_does_not_leak_into_the_next_stage():
    from accelerate import Accelerator

    from rlhf.runtime import fresh_accelerator_state, make_accelerator

    fresh_accelerator_state()  # whatever the tests before this one left
    Accelerator(cpu=True, mixed_precision="bf16")  # what a TRL trainer (SFT, DPO) leaves in the process
    try:
        acc = make_accelerator()
        assert acc.mixed_precision == "no"  # we decide precision ourselves (use_bf16), per stage
        assert not torch.is_autocast_enabled("cpu")
    finally:
        fresh_accelerator_state()
