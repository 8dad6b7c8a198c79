"""The pacing of batch work: short steps while interactive users are about, whole steps
once they have gone."""
from __future__ import annotations

from preheat.engine.background_pacer import RECENT_S, BackgroundPacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pacer(floor_s: float = 0.025) -> tuple[BackgroundPacer, FakeClock]:
    clock = FakeClock()
    return BackgroundPacer(512, floor_s, clock=clock), clock


def test_without_interactive_work_batch_steps_get_the_whole_budget():
    p, _ = pacer()
    p.observe_background(512, 5.0)  # however slow
    assert not p.pacing and p.budget() == 512 and p.cap == 512


def test_slow_batch_steps_shrink_to_a_quarter_of_the_interactive_step_time_and_grow_back():
    p, _ = pacer()
    p.saw_interactive()
    p.observe_interactive(0.4)  # the user's steps take 400 ms here
    assert p.target_s == 0.1  # a quarter of that
    cost = 0.01  # seconds per token of batch work
    for _ in range(20):
        tokens = p.budget()
        p.observe_background(tokens, tokens * cost)
    assert 5 <= p.budget() <= 10  # about 100 ms of it, within a factor of 2
    for _ in range(40):  # the work got cheaper: the budget follows
        tokens = p.budget()
        p.observe_background(tokens, tokens * cost / 10)
    assert p.budget() >= 50


def test_the_floor_holds_when_interactive_steps_are_fast():
    p, _ = pacer(floor_s=0.025)
    p.saw_interactive()
    p.observe_interactive(0.02)  # a quarter of it is under the floor
    assert p.target_s == 0.025
    p.observe_background(512, 0.020)  # within the floor: nothing to shrink
    assert p.budget() == 512


def test_the_budget_never_falls_below_one_token():
    p, _ = pacer()
    p.saw_interactive()
    for _ in range(20):
        p.observe_background(p.budget(), 1.0)
    assert p.budget() == 1


def test_pacing_ends_a_while_after_the_last_interactive_work():
    p, clock = pacer()
    p.saw_interactive()
    p.observe_background(512, 1.0)
    assert p.budget() == 256
    clock.now += RECENT_S + 1
    assert not p.pacing and p.budget() == 512
    p.saw_interactive()
    assert p.budget() == 256  # what it learnt is kept for the next user


def test_a_negative_floor_turns_pacing_off():
    p, _ = pacer(floor_s=-1.0)
    p.saw_interactive()
    p.observe_background(512, 5.0)
    assert not p.pacing and p.budget() == 512


def test_the_running_mean_of_interactive_steps():
    p, _ = pacer()
    p.observe_interactive(0.1)
    for _ in range(50):
        p.observe_interactive(0.2)
    assert 0.19 < p.interactive_step_s < 0.2


def test_where_steps_stop_between_layers_one_layer_is_held_to_a_quarter_of_an_interactive_step():
    clock = FakeClock()
    p = BackgroundPacer(512, 0.001, stretches=30, clock=clock)
    p.saw_interactive()
    p.observe_interactive(0.040)  # a newcomer may wait a quarter of it: 10 ms
    p.observe_background(512, 0.29)  # 30 layers of just under 10 ms: a newcomer waits one
    assert p.budget() == 512
    p.observe_background(512, 0.60)  # 20 ms a layer
    assert p.budget() == 256
    cost = 0.002  # seconds per token of batch work, 30 layers: a 5 ms layer is 75 tokens
    for _ in range(30):
        tokens = p.budget()
        p.observe_background(tokens, tokens * cost)
    assert 75 <= p.budget() <= 150  # one layer takes 5-10 ms, not the whole step
