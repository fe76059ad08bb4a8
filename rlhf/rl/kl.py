"""The KL coefficient: fixed, or adapted toward a target KL (Ziegler et al. 2019, "Fine-Tuning Language
Models from Human Preferences", section 2.2).

The adaptive controller multiplies the coefficient by ``1 + e * n / horizon`` after every PPO step, where
``e = clip(KL / target - 1, -0.2, 0.2)`` and ``n`` is the number of rollouts in the step: when the policy
drifts further than the target the penalty grows, when it stays closer the penalty shrinks.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FixedKLController:
    value: float

    def update(self, current_kl: float, n_steps: int) -> None:  # noqa: ARG002 - same interface as adaptive
        return None

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    value: float  # the current coefficient (starts at the configured one)
    target: float  # the KL (nats per sequence) the controller steers toward
    horizon: int  # rollouts over which a 20 % proportional error would move the coefficient by 20 %

    def __post_init__(self) -> None:
        if self.target <= 0 or self.horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0 (got {self.target}, {self.horizon})")

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


KLController = FixedKLController | AdaptiveKLController


def make_kl_controller(coef: float, adaptive: bool, target: float, horizon: int) -> KLController:
    return AdaptiveKLController(coef, target, horizon) if adaptive else FixedKLController(coef)
