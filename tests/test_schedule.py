"""Learning-rate schedules (``train.schedule``, ``train.warmup_epochs``): the default is the plain cosine
decay, bit for bit; poly and warm-up follow their formulas."""

import functools
import math

import pytest
import torch

from segpipe.training.trainer import POLY_POWER, lr_factor

TOTAL = 37


def plain_cosine(step: int, total_steps: int) -> float:
    """The cosine decay as segpipe always computed it."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def scheduled_rates(factor, lr: float = 2e-3, steps: int = TOTAL) -> list[float]:
    """The optimizer's rate before each step under ``LambdaLR(factor)``, as the trainer drives it."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rates = []
    for _ in range(steps + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_the_default_schedule_is_the_plain_cosine_bit_for_bit():
    default = functools.partial(lr_factor, total_steps=TOTAL)
    reference = functools.partial(plain_cosine, total_steps=TOTAL)
    assert scheduled_rates(default) == scheduled_rates(reference)
    cosine_no_warmup = functools.partial(lr_factor, total_steps=TOTAL, schedule="cosine", warmup_steps=0)
    steps = range(TOTAL + 3)
    assert [cosine_no_warmup(step) for step in steps] == [plain_cosine(step, TOTAL) for step in steps]


def test_poly_decays_with_power_0_9_to_zero():
    assert POLY_POWER == 0.9
    factors = [lr_factor(step, TOTAL, "poly") for step in range(TOTAL + 1)]
    assert factors[0] == 1.0 and factors[-1] == 0.0
    assert factors[10] == pytest.approx((1 - 10 / TOTAL) ** 0.9)
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))


@pytest.mark.parametrize("schedule", ["cosine", "poly"])
def test_warmup_rises_linearly_then_decays_over_the_remaining_steps(schedule):
    warmup = 10
    factors = [lr_factor(step, TOTAL, schedule, warmup) for step in range(TOTAL + 1)]
    assert factors[:warmup] == pytest.approx([(step + 1) / warmup for step in range(warmup)])
    assert factors[warmup - 1] == 1.0 and factors[warmup] == 1.0  # full rate reached, then the decay starts
    assert factors[-1] == 0.0
    assert factors[warmup + 5] == pytest.approx(lr_factor(5, TOTAL - warmup, schedule))
