"""The console hub's pace: who it waits for, and when a viewer stops setting it."""

from __future__ import annotations

from dataclasses import dataclass

from gridop.gateway.streams import HOLD_SECONDS, ConsoleHub

MARK = 1000


@dataclass(eq=False)
class FakeViewer:
    queued: int = 0
    closing: tuple[int, str] | None = None
    holding_since: float | None = None
    mark: int = MARK

    @property
    def backlogged(self) -> bool:
        return self.closing is None and self.queued >= self.mark


def hub(*viewers: FakeViewer) -> ConsoleHub:
    h = ConsoleHub(("ns", "s"), connect=lambda: None, on_empty=lambda _: None)
    h.viewers.update(viewers)  # type: ignore[arg-type]
    return h


def test_nobody_backlogged_reads_on() -> None:
    assert hub(FakeViewer(10), FakeViewer(0)).pace_wait(0.0) is None


def test_a_lone_backlogged_viewer_blocks_the_console_for_as_long_as_it_takes() -> None:
    v = FakeViewer(MARK)
    h = hub(v)
    for now in (0.0, 10.0, 1000.0):
        assert h.pace_wait(now) is not None


def test_a_viewer_that_keeps_holding_the_others_back_stops_setting_the_pace() -> None:
    slow, fast = FakeViewer(MARK), FakeViewer(0)
    h = hub(slow, fast)
    assert h.pace_wait(0.0) is not None
    # It drains a little now and then (a slow link), but never catches up with the fast one.
    for step in range(1, 20):
        now = step * HOLD_SECONDS / 10
        slow.queued = MARK - 1 if step % 2 else MARK
        fast.queued = 0
        wait = h.pace_wait(now)
        if now < HOLD_SECONDS:
            assert slow.queued < MARK or wait is not None
        else:
            assert wait is None, f"still paced by the slow viewer at {now}s"


def test_viewers_that_swap_places_hold_the_pace_indefinitely() -> None:
    a, b = FakeViewer(MARK), FakeViewer(0)
    h = hub(a, b)
    for step in range(100):
        now = step * HOLD_SECONDS / 4
        a.queued, b.queued = (MARK, 0) if step % 2 else (0, MARK)  # jitter: now one, now the other behind
        assert h.pace_wait(now) is not None, f"a jittering viewer lost the pace at {now}s"


def test_every_viewer_backlogged_blocks_even_after_the_hold() -> None:
    a, b = FakeViewer(MARK, holding_since=0.0), FakeViewer(2 * MARK, holding_since=0.0)
    assert hub(a, b).pace_wait(10 * HOLD_SECONDS) is not None


def test_closing_viewers_do_not_count() -> None:
    assert hub(FakeViewer(5 * MARK, closing=(1008, "too slow")), FakeViewer(0)).pace_wait(0.0) is None
