"""When the alert service takes its full engine snapshot (gateway.alerts.cadence)."""

from __future__ import annotations

from gateway.alerts.cadence import SnapshotCadence


def test_only_when_changed_and_not_more_often_than_the_interval() -> None:
    c = SnapshotCadence(interval_s=10.0, last_s=0.0)
    assert not c.due(100.0)                      # nothing changed
    c.changed()
    assert not c.due(9.9) and c.due(10.0)
    c.taken(10.0, cpu_s=0.01)
    assert not c.due(30.0)                       # clean again
    c.changed()
    assert not c.due(19.9) and c.due(20.0)


def test_waits_for_a_lull_after_closes_but_not_forever() -> None:
    c = SnapshotCadence(interval_s=10.0, lull_s=1.0, last_s=0.0)
    c.closed(10.5)
    assert not c.due(11.0)                       # windows closing right now
    assert c.due(11.5)                           # a second later: the lull
    c.closed(29.9)
    assert not c.due(29.95)
    assert c.due(30.0)                           # three intervals: taken anyway


def test_expensive_snapshots_stretch_the_interval() -> None:
    c = SnapshotCadence(interval_s=10.0, cpu_share=0.02, last_s=0.0)
    c.changed()
    c.taken(10.0, cpu_s=0.5)                     # 0.5 s of CPU: every 25 s at most
    assert c.every_s == 25.0
    c.changed()
    assert not c.due(34.0) and c.due(35.0)
    c.taken(35.0, cpu_s=0.05)
    assert c.every_s == 10.0
