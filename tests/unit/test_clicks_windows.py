"""Click windows: 1-minute tumbling per event type, 15-minute grace, late events counted."""

from __future__ import annotations

import json
import random

from cloud.clicks.windows import ClickWindows

M = 60_000
GRACE = 15 * M
T0 = 1_705_314_600_000  # a minute boundary


def windows() -> ClickWindows:
    return ClickWindows(size_ms=M, grace_ms=GRACE, idle_ms=30_000)


def test_counts_users_and_sessions_per_event_type_and_minute() -> None:
    w = windows()
    for i, (et, user, sess) in enumerate([("click", "u1", "s1"), ("click", "u1", "s1"),
                                          ("click", "u2", "s2"), ("view", "u1", "s1")]):
        assert w.observe(et, T0 + i * 1000, user, sess, arrival_ms=T0 + i * 1000)
    w.observe("click", T0 + M + 5, "u3", None, arrival_ms=T0 + M + 5)
    assert w.advance(T0 + M + 10) == []  # nothing is final before size + grace
    provisional = {(r.event_type, r.start_ms): r for r in w.provisional()}
    assert provisional[("click", T0)].events == 3 and not provisional[("click", T0)].final
    assert w.provisional() == []  # only windows that changed
    # stream time reaches the end of the first minute + grace
    w.observe("view", T0 + M + GRACE, "u9", "s9", arrival_ms=T0 + M + GRACE)
    finals = w.advance(T0 + M + GRACE)
    assert [(r.event_type, r.start_ms, r.events, r.users, r.sessions, r.final)
            for r in finals] == [("click", T0, 3, 2, 2, True), ("view", T0, 1, 1, 1, True)]
    assert finals[0].end_ms == T0 + M


def test_events_within_the_grace_are_merged_later_ones_are_late() -> None:
    w = windows()
    w.observe("click", T0 + 10, "u1", None, arrival_ms=T0)
    w.observe("click", T0 + 14 * M, "u2", None, arrival_ms=T0)
    # 14 minutes behind stream time: within the grace, merged, counted out of order
    assert w.observe("click", T0 + 20, "u3", None, arrival_ms=T0)
    w.observe("click", T0 + 16 * M, "u4", None, arrival_ms=T0)
    finals = w.advance(T0)
    assert [(r.start_ms, r.events, r.out_of_order) for r in finals] == [(T0, 2, 1)]
    # the first minute is final: an event for it now is late, counted, not merged
    assert not w.observe("click", T0 + 30, "u5", None, arrival_ms=T0)
    assert w.counters["late"] == 1
    assert w.advance(T0) == []


def test_a_browser_clock_ahead_does_not_close_windows_early() -> None:
    w = windows()
    w.observe("click", T0, "u1", None, arrival_ms=T0, stored_ms=T0)
    # stamped 20 minutes ahead but stored now: stream time stays at the store time
    w.observe("click", T0 + 20 * M, "u2", None, arrival_ms=T0, stored_ms=T0 + 1)
    assert w.stream_ms == T0 + 1
    assert w.advance(T0 + 1) == []
    assert w.observe("click", T0 + 5, "u3", None, arrival_ms=T0)


def test_idle_streams_follow_the_wall_clock() -> None:
    w = windows()
    w.observe("click", T0, "u1", None, arrival_ms=T0)
    assert w.advance(T0 + 29_000) == []
    finals = w.advance(T0 + M + GRACE + 30_000)
    assert [(r.start_ms, r.events) for r in finals] == [(T0, 1)]


def test_out_of_order_input_gives_the_same_windows_as_sorted_input() -> None:
    rng = random.Random(7)
    events = [("click" if rng.random() < 0.7 else "view", T0 + rng.randrange(0, 30 * M),
               f"u{rng.randrange(50)}", f"s{rng.randrange(80)}") for _ in range(3000)]
    events.sort(key=lambda e: e[1])
    # shuffle within a 10-minute horizon (less than the grace)
    jittered = sorted(events, key=lambda e: e[1] + rng.randrange(0, 10 * M))

    def run(seq: list[tuple[str, int, str, str]]) -> list[tuple[str, int, int, int, int]]:
        w = windows()
        out = []
        for et, ts, u, s in seq:
            assert w.observe(et, ts, u, s, arrival_ms=ts)
            out += w.advance(ts)
        w.observe("x", T0 + 60 * M, "u", "s", arrival_ms=T0 + 60 * M)
        out += w.advance(T0 + 60 * M)
        return sorted((r.event_type, r.start_ms, r.events, r.users, r.sessions) for r in out)

    assert run(events) == run(jittered)
    assert sum(r[2] for r in run(events) if r[0] != "x") == 3000


def test_state_round_trips_through_json() -> None:
    w = windows()
    for i in range(50):
        w.observe("click" if i % 3 else "view", T0 + i * 7000, f"u{i % 5}", f"s{i % 7}",
                  arrival_ms=T0 + i * 7000)
    w.advance(T0 + 50 * 7000)
    state = json.loads(json.dumps(w.to_state()))
    r = ClickWindows.from_state(state, idle_ms=30_000, now_ms=T0 + 50 * 7000)
    assert r.stream_ms == w.stream_ms and r.closed_before == w.closed_before
    end = T0 + 40 * M
    for x in (w, r):
        x.observe("click", end, "u", "s", arrival_ms=end)
    assert [x.as_dict() for x in w.advance(end)] == [x.as_dict() for x in r.advance(end)]
