"""`AlertEngine`: windows + rules + alert lifecycle, pure and single-threaded.

Who calls what (the gateway's local-alert task; tests call the same API)::

    eng = AlertEngine(ruleset, now_ms=clock.now_ms())
    out = eng.observe(reading)                      # every accepted reading, in arrival order
    out = eng.advance(now_ms, gateway_status)       # every ~100 ms
    if eng.closes_pending(now_ms):                  # a reading made windows due (or a
        out = eng.close_windows(now_ms)             # bounded advance left some): close now
    eng.acknowledge("overheat:sensor-7", by="operator1", now_ms=...)
    reload = eng.replace_rules(load_rules(path))    # on SIGHUP / file change
    snap = eng.snapshot()                           # msgpack-safe; persist it
    eng = AlertEngine.restore(ruleset, snap, now_ms=...)

Every call returns an `Output` (aggregates, alert transitions, refused readings) that the caller
must forward (aggregates and transitions as `Event`s via `to_event()`, refused readings to its
counters).  Nothing here blocks, sleeps, reads a clock or does I/O.

Timing.  `observe` files readings and evaluates per-reading rules (stale recovery, low battery
on the last reading) at once; windows that became due are closed, computed and evaluated by
the next `advance` (which also runs stale checks, gateway rules and re-notifications) or
`close_windows` (windows only — the caller runs it as soon as `closes_pending` says a
reading made a window due, so an alert does not wait for the next tick).  Both take
`max_windows` to bound the work of one call (about that many windows; the rest stay due,
oldest first, for the next call — see `edge.windows.windower`).  `now_ms` is the processing
clock; `observe(reading)` without `now_ms` takes the last `advance` time as the reading's
arrival.  Transitions carry `at_ms` = the `now_ms` they were produced at.

Closed windows stay column-wise (`edge.windows.ClosedWindows`): rules are evaluated on the
aggregate columns with numpy, and only the windows a rule acts on (its condition holds, or
the subject has an alert or a `for N windows` count) are stepped one by one; `Output.aggregates`
builds the other `WindowResult`s only when the caller reads them.

Hysteresis.  A rule fires when its condition holds for `for N windows` consecutive windows
(windows whose starts are exactly one slide apart; a gap restarts the count) and, once firing,
resolves only when its clear condition holds (default: the condition's negation) for the
clear's window count.  A value that is missing (None) changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from edge.model import Event, Reading
from edge.rules import snapshot as _snapshot
from edge.rules.alerts import AlertBook, AlertTransition
from edge.rules.model import Matcher, Rule, RuleSet
from edge.rules.snapshot import SNAPSHOT_VERSION, EngineCapture
from edge.rules.stale import StaleTracker
from edge.rules.vector import candidates
from edge.windows import Chain, ClosedWindows, Late, Windower, WindowResult

__all__ = ["SNAPSHOT_VERSION", "AlertEngine", "EngineCapture", "GatewayStatus", "Output",
           "Reload", "iso_ms"]


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """The gateway's own health, as the caller sees it at `advance` time."""

    #: 0.0 .. 1.0 of the store-and-forward buffer's capacity
    buffer_fill_ratio: float = 0.0
    #: when the uplink went down (processing-clock ms), or None while it is up
    uplink_down_since_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Output:
    #: closed windows; a lazy sequence (`edge.windows.Chain`) — elements are built on access
    aggregates: Sequence[WindowResult] = ()
    transitions: tuple[AlertTransition, ...] = ()
    late: tuple[Late, ...] = ()

    def events(self) -> list[Event]:
        """Aggregates then alert transitions, as events for the buffer/uplink."""
        return ([a.to_event() for a in self.aggregates]
                + [t.to_event() for t in self.transitions])

    def __bool__(self) -> bool:
        return bool(self.aggregates or self.transitions or self.late)


_EMPTY = Output()


@dataclass(frozen=True, slots=True)
class Reload:
    """What `replace_rules` did.  `output` holds windows flushed because their spec changed or
    was removed (closed_by="reload"; no rules are evaluated on them) and the resolutions of
    alerts whose rule went away or no longer matches."""

    output: Output
    windows_kept: tuple[str, ...] = ()
    windows_restarted: tuple[str, ...] = ()
    windows_added: tuple[str, ...] = ()
    windows_removed: tuple[str, ...] = ()
    rules_added: tuple[str, ...] = ()
    rules_removed: tuple[str, ...] = ()


class _Streak:
    """Consecutive windows meeting a condition (fire while quiet, clear while firing)."""

    __slots__ = ("count", "next_start")

    def __init__(self, count: int = 0, next_start: int | None = None) -> None:
        self.count = count
        self.next_start = next_start


def iso_ms(ms: int) -> str:
    """UTC ISO-8601 (`2024-01-15T12:40:40Z`, with `.123` when not on a whole second)."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
    return text + (f".{ms % 1000:03d}Z" if ms % 1000 else "Z")


def _scope(measurement: str | None, tags: Mapping[str, str], window: str | None = None
           ) -> dict[str, Any]:
    """What a rule matched on, kept with its alert to recheck after a reload."""
    return {"measurement": measurement, "tags": dict(tags), "window": window}


def _still_seen(matcher: Matcher, dev: str, r: Reading) -> bool:
    return matcher.matches(dev, r.measurement, r.tags)


def _scope_of(source: Reading | WindowResult | None) -> dict[str, Any]:
    if source is None:
        return {}
    if isinstance(source, WindowResult):
        return _scope(source.measurement, source.tags, source.window)
    return _scope(source.measurement, source.tags)


class AlertEngine:
    def __init__(self, ruleset: RuleSet, *, now_ms: int, gateway_id: str = "gateway") -> None:
        self.gateway_id = gateway_id
        self._now = now_ms
        self._book = AlertBook()
        self._streaks: dict[tuple[str, str], _Streak] = {}
        self._stale = StaleTracker()
        self._windowers = {wid: Windower(spec, now_ms=now_ms)
                           for wid, spec in ruleset.windows.items()}
        self._pending: list[AlertTransition] = []
        self._pending_aggregates: list[Sequence[WindowResult]] = []
        #: which windower a bounded close starts with (rotates: no family starves)
        self._first = 0
        self._install(ruleset)

    def _install(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self._rules = {r.id: r for r in ruleset.rules}
        self._window_rules = [r for r in ruleset.rules if r.on_windows]
        self._rules_by_window: dict[str, list[Rule]] = {}
        for r in self._window_rules:
            if r.window is not None:
                self._rules_by_window.setdefault(r.window, []).append(r)
        self._reading_rules = [r for r in ruleset.rules if r.on_readings]
        self._gateway_rules = [r for r in ruleset.rules if r.on_gateway]
        self._stale_rules = [r for r in ruleset.rules if r.kind == "stale"]
        self._cooldowns = {r.id: r.cooldown_ms for r in ruleset.rules}
        self._reading_cache: dict[tuple[Any, ...], tuple[Rule, ...]] = {}
        self._window_cache: dict[tuple[Any, ...], tuple[int, ...]] = {}
        for rule in self._stale_rules:
            self._stale.track(rule.id)

    # -- input -----------------------------------------------------------------------------

    def observe(self, reading: Reading, now_ms: int | None = None) -> Output:
        """File one accepted reading; evaluate per-reading rules.  Never raises for data."""
        arrival = self._now if now_ms is None else now_ms
        late: list[Late] | None = None
        for w in self._windowers.values():
            refused = w.observe(reading, arrival)
            if refused is not None:
                late = late or []
                late.append(refused)
        transitions: list[AlertTransition] | None = None
        if self._reading_rules:
            ck = (reading.device_id, reading.measurement, reading.facility, reading.line,
                  reading.zone)
            rules = self._reading_cache.get(ck)
            if rules is None:
                rules = self._reading_cache[ck] = tuple(
                    r for r in self._reading_rules
                    if r.matcher.matches(reading.device_id, reading.measurement, reading.tags))
            for rule in rules:
                t = (self._seen_reading(rule, reading, arrival) if rule.kind == "stale"
                     else self._battery_reading(rule, reading, arrival))
                if t is not None:
                    transitions = transitions or []
                    transitions.append(t)
        if late is None and transitions is None:
            return _EMPTY
        return Output(transitions=tuple(transitions or ()), late=tuple(late or ()))

    def observe_many(self, readings: Iterable[Reading], now_ms: int | None = None) -> Output:
        late: list[Late] = []
        transitions: list[AlertTransition] = []
        for r in readings:
            out = self.observe(r, now_ms)
            if out:
                late += out.late
                transitions += out.transitions
        return Output(transitions=tuple(transitions), late=tuple(late))

    def _seen_reading(self, rule: Rule, r: Reading, arrival: int) -> AlertTransition | None:
        previous = self._stale.saw(rule.id, r, arrival)
        if previous is None:
            return None
        values = self._stale_values(rule, r.device_id, previous[0], previous[1], arrival)
        return self._book.resolve(f"{rule.id}:{r.device_id}", arrival, "cleared", values)

    def _battery_reading(self, rule: Rule, r: Reading, arrival: int) -> AlertTransition | None:
        volts = r.battery_voltage
        if volts is None and r.measurement == "battery_voltage":
            volts = r.value
        if volts is None:
            return None
        assert rule.fire is not None
        if not rule.fire.test(volts) and self._book.get(f"{rule.id}:{r.device_id}") is None:
            return None  # the common case, decided without building a context

        def context() -> dict[str, Any]:
            assert rule.fire is not None
            return {"voltage": volts, "threshold": rule.fire.threshold,
                    "measurement": r.measurement, **r.tags}

        return self._step(rule, r.device_id, volts, arrival, None, None, context, r)

    # -- time ------------------------------------------------------------------------------

    def advance(self, now_ms: int, gateway_status: GatewayStatus | None = None, *,
                max_windows: int | None = None) -> Output:
        """Close due windows (at most about `max_windows`) and evaluate them; stale, gateway
        and re-notification checks.

        Without `gateway_status` the gateway rules keep their state (nothing is known)."""
        self._now = now_ms
        parts, self._pending_aggregates = self._pending_aggregates, []
        transitions, self._pending = self._pending, []
        self._close(now_ms, max_windows, parts, transitions)
        for rule in self._stale_rules:
            transitions += self._check_stale(rule, now_ms)
        if gateway_status is not None:
            for rule in self._gateway_rules:
                t = self._evaluate_gateway(rule, gateway_status, now_ms)
                if t is not None:
                    transitions.append(t)
        transitions += self._book.due_renotifications(now_ms, self._cooldowns, self._rerender)
        return self._output(parts, transitions)

    def close_windows(self, now_ms: int, *, max_windows: int | None = None) -> Output:
        """Close due windows (at most about `max_windows`) and evaluate their rules — nothing
        else: the part of `advance` an alert waits for, to run between ticks."""
        self._now = now_ms
        parts: list[Sequence[WindowResult]] = []
        transitions: list[AlertTransition] = []
        self._close(now_ms, max_windows, parts, transitions)
        return self._output(parts, transitions)

    @property
    def windows_due(self) -> bool:
        """Whether a reading moved some series' watermark past a window's end (cheap, no
        clock needed: call it after `observe` to decide whether to close windows now)."""
        for w in self._windowers.values():
            if w.due_count:
                return True
        return False

    def closes_pending(self, now_ms: int) -> bool:
        """Whether windows are due at `now_ms` (a reading moved a watermark past a window's
        end, an idle deadline passed, or a bounded call left some)."""
        return any(w.closes_pending(now_ms) for w in self._windowers.values())

    def next_deadline_ms(self) -> int | None:
        """The earliest idle deadline of any window family (processing clock), or None."""
        found = [d for w in self._windowers.values()
                 if (d := w.next_deadline_ms()) is not None]
        return min(found) if found else None

    def _close(self, now_ms: int, max_windows: int | None,
               parts: list[Sequence[WindowResult]], transitions: list[AlertTransition]
               ) -> None:
        windowers = list(self._windowers.values())
        if not windowers:
            return
        self._first = (self._first + 1) % len(windowers)
        left = max_windows
        for w in windowers[self._first:] + windowers[:self._first]:
            if left is not None and left <= 0:
                break
            closed = w.close_due(now_ms, left)
            if not closed:
                continue
            if left is not None:
                left -= len(closed)
            parts.append(closed)
            transitions += self._evaluate_batch(closed, now_ms)

    def _output(self, parts: list[Sequence[WindowResult]],
                transitions: list[AlertTransition]) -> Output:
        if not transitions and not any(len(p) for p in parts):
            return _EMPTY
        return Output(aggregates=Chain(parts), transitions=tuple(transitions))

    def flush(self, now_ms: int) -> Output:
        """Close every open window now and evaluate rules on them (closed_by="flush").

        Prefer `snapshot(include_windows=True)` at shutdown: a flushed partial window and the
        rest of it seen after a restart share one idempotency key."""
        self._now = now_ms
        parts: list[Sequence[WindowResult]] = []
        transitions: list[AlertTransition] = []
        for w in self._windowers.values():
            closed = w.close_all()
            parts.append(closed)
            transitions += self._evaluate_batch(closed, now_ms)
        return Output(aggregates=Chain(parts), transitions=tuple(transitions))

    def _evaluate_batch(self, batch: ClosedWindows, now_ms: int) -> list[AlertTransition]:
        """Rules on a batch of closed windows: matched per series (cached), pre-filtered on
        the aggregate columns, stepped in close order for the windows a rule acts on."""
        rules = self._rules_by_window.get(batch.window_id)
        if not rules or not len(batch):
            return []
        keys = batch.keys()
        per_rule = self._match(batch, rules, keys)
        todo: list[tuple[int, int]] = []
        for j, idx in per_rule.items():
            rule = rules[j]
            todo += [(i, j) for i in candidates(rule, batch, idx, keys,
                                                self._stateful(rule.id))]
        todo.sort()
        out = []
        for i, j in todo:
            t = self._evaluate_window(rules[j], batch[i], now_ms)
            if t is not None:
                out.append(t)
        return out

    def _match(self, batch: ClosedWindows, rules: list[Rule], keys: list[str]
               ) -> dict[int, list[int]]:
        """Window indices of `batch` each rule (by position in `rules`) applies to."""
        wid = batch.window_id
        cache = self._window_cache
        per_rule: dict[int, list[int]] = {}
        meas = batch.measurements()
        for i, (key, m, r) in enumerate(zip(keys, meas, batch.latest_readings())):
            ck = (wid, key, m, r.facility, r.line, r.zone)
            hit = cache.get(ck)
            if hit is None:
                tags = batch.tags(i)
                hit = cache[ck] = tuple(j for j, rule in enumerate(rules)
                                        if rule.matcher.matches(key, m, tags))
            for j in hit:
                got = per_rule.get(j)
                if got is None:
                    per_rule[j] = [i]
                else:
                    got.append(i)
        return per_rule

    def _stateful(self, rule_id: str) -> set[str]:
        """Subjects of `rule_id` with an active alert or a `for N windows` count."""
        out = {a.subject for a in self._book if a.rule_id == rule_id}
        out.update(subject for rid, subject in self._streaks if rid == rule_id)
        return out

    def _evaluate_window(self, rule: Rule, res: WindowResult, now_ms: int
                         ) -> AlertTransition | None:
        value = rule.window_value(res)

        def context() -> dict[str, Any]:
            return self._window_values(rule, res, value)

        return self._step(rule, res.key, value, now_ms, res.start_ms,
                          res.start_ms + res.slide_ms, context, res)

    def _window_values(self, rule: Rule, res: WindowResult, value: float | None
                       ) -> dict[str, Any]:
        assert rule.fire is not None
        values: dict[str, Any] = {
            "window": res.window, "key": res.key, "measurement": res.measurement,
            "unit": res.unit, "start_ms": res.start_ms, "end_ms": res.end_ms,
            "start": iso_ms(res.start_ms), "end": iso_ms(res.end_ms), **res.aggregates,
            "value": value, "threshold": rule.fire.threshold, **res.tags,
        }
        if rule.kind == "threshold":
            values["condition"] = str(rule.fire)
        if rule.kind == "low_battery":
            values["voltage"] = res.battery_min
        return values

    def _check_stale(self, rule: Rule, now_ms: int) -> list[AlertTransition]:
        out = []
        for dev, (arrival, r) in self._stale.newly_silent(rule.id, now_ms - rule.after_ms):
            if self._book.get(f"{rule.id}:{dev}") is None:
                values = self._stale_values(rule, dev, arrival, r, now_ms)
                out.append(self._book.fire(
                    rule_id=rule.id, kind=rule.kind, subject=dev, severity=rule.severity,
                    message=self._render(rule, dev, values), values=values, now_ms=now_ms,
                    cooldown_ms=rule.cooldown_ms, scope=_scope(r.measurement, r.tags)))
        return out

    def _stale_values(self, rule: Rule, dev: str, arrival: int, r: Reading, now_ms: int
                      ) -> dict[str, Any]:
        return {"last_seen": iso_ms(arrival), "last_seen_ms": arrival,
                "silent_s": (now_ms - arrival) / 1000, "after_s": rule.after_ms / 1000,
                "measurement": r.measurement, **r.tags}

    def _evaluate_gateway(self, rule: Rule, status: GatewayStatus, now_ms: int
                          ) -> AlertTransition | None:
        if rule.kind == "buffer_fill":
            fill = status.buffer_fill_ratio * 100.0
            assert rule.fire is not None
            values: dict[str, Any] = {"fill_percent": fill, "threshold": rule.fire.threshold}
            return self._step(rule, self.gateway_id, fill, now_ms, None, None,
                              lambda: values, None)
        since = status.uplink_down_since_ms
        down_s = 0.0 if since is None else max(0, now_ms - since) / 1000

        def context() -> dict[str, Any]:
            return {"down_since": iso_ms(since) if since is not None else None,
                    "down_s": down_s, "after_s": rule.after_ms / 1000}

        return self._step(rule, self.gateway_id, down_s, now_ms, None, None, context, None)

    # -- the hysteresis step shared by every evaluated rule ---------------------------------

    def _step(self, rule: Rule, subject: str, value: float | None, now_ms: int,
              start_ms: int | None, next_start: int | None,
              context: Callable[[], dict[str, Any]], source: Reading | WindowResult | None
              ) -> AlertTransition | None:
        """One evaluation of `rule` for `subject`; `source` is what the scope is taken from
        if it fires (computed only then: this runs for every reading of some rules)."""
        assert rule.fire is not None and rule.clear is not None
        dedup = f"{rule.id}:{subject}"
        alert = self._book.get(dedup)
        cond = rule.fire if alert is None else rule.clear
        ok = cond.test(value)
        if ok is None:
            return None
        key = (rule.id, subject)
        if not ok:
            self._streaks.pop(key, None)
            if alert is not None:
                alert.values = context()
            return None
        if cond.windows > 1:
            st = self._streaks.get(key)
            if st is None:
                st = self._streaks[key] = _Streak()
            if start_ms is not None and st.next_start is not None and st.next_start != start_ms:
                st.count = 0
            st.count += 1
            st.next_start = next_start
            if st.count < cond.windows:
                return None
        self._streaks.pop(key, None)
        values = context()
        if alert is not None:
            return self._book.resolve(dedup, now_ms, "cleared", values)
        return self._book.fire(rule_id=rule.id, kind=rule.kind, subject=subject,
                               severity=rule.severity,
                               message=self._render(rule, subject, values), values=values,
                               now_ms=now_ms, cooldown_ms=rule.cooldown_ms,
                               scope=_scope_of(source))

    def _render(self, rule: Rule, subject: str, values: Mapping[str, Any]) -> str:
        return rule.message.render({**values, "rule_id": rule.id, "device_id": subject,
                                    "severity": rule.severity})

    def _rerender(self, alert: Any) -> str | None:
        rule = self._rules.get(alert.rule_id)
        return None if rule is None else self._render(rule, alert.subject, alert.values)

    # -- operators -------------------------------------------------------------------------

    def acknowledge(self, dedup_key: str, by: str, now_ms: int) -> AlertTransition | None:
        """Acknowledge a firing alert; None if it is not firing (resolved, unknown, acked)."""
        return self._book.acknowledge(dedup_key, by, now_ms)

    def active_alerts(self) -> list[dict[str, Any]]:
        """Bodies of every firing or acknowledged alert (for a local status page)."""
        return [a.body() for a in self._book]

    @property
    def windowers(self) -> Mapping[str, Windower]:
        return self._windowers

    # -- reload ----------------------------------------------------------------------------

    def replace_rules(self, ruleset: RuleSet) -> Reload:
        """Swap in a new rule set, keeping the state of rules and windows that persist."""
        aggregates: list[Sequence[WindowResult]] = []
        kept, restarted, added = [], [], []
        for wid, spec in ruleset.windows.items():
            w = self._windowers.get(wid)
            if w is None:
                added.append(wid)
            elif w.spec == spec:
                kept.append(wid)
                continue
            else:
                restarted.append(wid)
                aggregates.append(w.close_all("reload"))
            self._windowers[wid] = Windower(spec, now_ms=self._now)
        removed = [wid for wid in self._windowers if wid not in ruleset.windows]
        for wid in removed:
            aggregates.append(self._windowers.pop(wid).close_all("reload"))
        old_rules = self._rules
        new_rules = {r.id: r for r in ruleset.rules}
        fresh = set(restarted)
        transitions = self._reconcile(new_rules, lambda old, new: (
            old.kind != new.kind or old.window != new.window or old.fire != new.fire
            or old.clear != new.clear or (new.window in fresh)))
        self._install(ruleset)
        return Reload(
            output=Output(aggregates=Chain(aggregates), transitions=tuple(transitions)),
            windows_kept=tuple(kept), windows_restarted=tuple(restarted),
            windows_added=tuple(added), windows_removed=tuple(removed),
            rules_added=tuple(r for r in new_rules if r not in old_rules),
            rules_removed=tuple(r for r in old_rules if r not in new_rules))

    def _reconcile(self, new_rules: Mapping[str, Rule],
                   streak_invalid: Callable[[Rule, Rule], bool]) -> list[AlertTransition]:
        """Drop state of rules that are gone; resolve alerts they or their new match orphan."""
        out = []
        for alert in self._book:
            rule = new_rules.get(alert.rule_id)
            reason = None
            if rule is None:
                reason = "rule_removed"
            elif rule.kind != alert.kind or not (rule.on_gateway or rule.matcher.matches(
                    alert.subject, alert.scope.get("measurement"), alert.scope.get("tags", {}))):
                reason = "rule_changed"
            elif rule.cooldown_ms != self._cooldowns.get(rule.id):
                self._book.schedule(alert, rule.cooldown_ms)
            if reason is not None:
                t = self._book.resolve(alert.dedup_key, self._now, reason)
                if t is not None:
                    out.append(t)
                self._stale.forget_silent(alert.rule_id, alert.subject)
        for key in list(self._streaks):
            old, new = self._rules.get(key[0]), new_rules.get(key[0])
            if new is None or (old is not None and streak_invalid(old, new)):
                del self._streaks[key]
        for rid in self._stale.rules():
            new = new_rules.get(rid)
            if new is None or new.kind != "stale":
                self._stale.drop(rid)
            else:
                self._stale.keep_seen(rid, partial(_still_seen, new.matcher))
        return out

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self, *, include_windows: bool = False) -> dict[str, Any]:
        """State to persist: alerts, streaks, stale tracking (and open windows if asked).
        msgpack-safe; JSON-safe without windows (their value arrays are `bytes`).

        Without windows the snapshot is small (alerts and per-device last-seen times); with
        them it also holds every open window's values, so a restart loses no partial window.
        """
        return self.capture(include_windows=include_windows).to_dict()

    def capture(self, *, include_windows: bool = False) -> EngineCapture:
        """The state `snapshot` would return, as a quick copy: `.to_dict()` builds the
        snapshot later, on any thread (`edge.rules.snapshot`)."""
        return _snapshot.capture(self, include_windows=include_windows)

    @classmethod
    def restore(cls, ruleset: RuleSet, snapshot: Mapping[str, Any], *, now_ms: int,
                gateway_id: str | None = None) -> AlertEngine:
        """Rebuild from `snapshot()`, possibly under a changed rule set.

        Firing alerts stay firing (no second `firing` for the same condition).  Alerts of rules
        no longer in `ruleset`, and windows whose spec changed, come out of the next `advance`
        (resolved "rule_removed"/"rule_changed"; windows flushed with closed_by="reload").
        Stale tracking restarts its clock at `now_ms`: the gateway being down is not every
        device being silent.  Raises ValueError for a snapshot of another format version.
        """
        return _snapshot.restore(cls, ruleset, snapshot, now_ms=now_ms, gateway_id=gateway_id)
