"""The CDC sink: change-event topics -> a warehouse table per source table, MERGE semantics.

    async with open_bus(cfg.cloud_config()) as bus, \\
            CdcSink(SinkSettings.from_config(cfg), bus, lambda: DuckDBTarget(path)) as sink:
        await sink.wait(stop)

The task "cdc-sink" polls the table topics of the consumer group, turns each poll into one
`Plan` per table (`plan_batch`, pure) and applies them in ONE warehouse transaction
(`cloud.cdc.warehouse`); only after that transaction committed are the offsets committed.  A
crash anywhere re-delivers the uncommitted events, and applying them again gives the same
table (upserts and deletes by key are idempotent), so the warehouse converges to the source.

Within a poll, a key's events are collapsed to the last one (its partition keeps them in
order); a truncate event of partition p discards the earlier events of p and deletes the
warehouse rows of p before the later ones are applied.

Bad records (not JSON, no columns header, a value the target type cannot hold) are
dead-lettered to `<dead letter topic>` with a reason and skipped: when a batch's transaction
fails on data, its records are applied one by one to find the culprits.  The warehouse being
unreachable (PostgreSQL target down) is retried with capped, jittered backoff; nothing is
committed meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from prometheus_client import CollectorRegistry, Counter

from cloud.bus import OutRecord, Record, TopicSpec, offsets_after
from cloud.bus.base import Bus, Consumer
from cloud.cdc.envelope import COLUMNS_HEADER, UNAVAILABLE
from cloud.cdc.warehouse import META, Column, Plan, TableRef, Target, to_python
from cloud.errors import BrokerUnavailable, ConsumerFenced
from cloud.http import ServiceHttp
from edge.backoff import Backoff

__all__ = ["BadRecord", "CdcSink", "SinkSettings", "plan_batch"]

log = logging.getLogger("fieldlink.cloud.cdc")


class BadRecord(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SinkSettings:
    topics: tuple[str, ...]
    group: str = "cdc-warehouse"
    deadletter_topic: str = "cdc.deadletter"
    max_records: int = 5000
    poll_ms: int = 500
    replication_factor: int = 1
    http_host: str = "127.0.0.1"
    http_port: int | None = 0

    @classmethod
    def from_config(cls, cfg: Any) -> SinkSettings:
        """From an `edge.config.secondary.SecondaryConfig`."""
        c = cfg.cdc
        return cls(topics=tuple(c.topic(t) for t in c.tables), group=c.sink_group,
                   deadletter_topic=f"cdc.{c.server}.deadletter",
                   replication_factor=cfg.kafka.replication_factor,
                   http_port=c.sink_metrics_port)


def _columns(record: Record) -> list[Column]:
    raw = record.header(COLUMNS_HEADER)
    if raw is None:
        raise BadRecord("no_columns", f"the record has no {COLUMNS_HEADER} header")
    try:
        return [Column(str(n), int(o), int(t), bool(k)) for n, o, t, k in json.loads(raw)]
    except (ValueError, TypeError) as e:
        raise BadRecord("bad_columns", f"{COLUMNS_HEADER}: {e}") from None


def _row(values: dict[str, Any], columns: dict[str, Column], dialect: str) -> dict[str, Any]:
    out = {}
    for name, value in values.items():
        if value == UNAVAILABLE:
            continue  # not sent by the server: leave the stored value alone
        col = columns.get(name)
        if col is None:
            raise BadRecord("unknown_column", f"column {name} is not in the columns header")
        try:
            out[name] = to_python(value, col, dialect)
        except (ValueError, TypeError, ArithmeticError) as e:
            raise BadRecord("bad_value", f"column {name}: {e}") from None
    return out


def _merge_columns(old: list[Column], new: list[Column]) -> list[Column]:
    names = {c.name for c in old}
    return old + [c for c in new if c.name not in names]


def plan_batch(records: Sequence[Record], dialect: str
               ) -> tuple[list[Plan], list[tuple[Record, BadRecord]]]:
    """One Plan per table touched by `records` (in order), and the records that are bad."""
    plans: dict[tuple[str, str], Plan] = {}
    #: per table: record key -> (partition, "upsert" | "delete", row or key dict)
    pending: dict[tuple[str, str], dict[bytes, tuple[int, str, dict[str, Any]]]] = {}
    bad: list[tuple[Record, BadRecord]] = []
    for r in records:
        try:
            if not r.value:
                continue  # a tombstone: the delete before it did the work
            try:
                event = json.loads(r.value)
                op = event["op"]
                source = event["source"]
                ref = TableRef(str(source["schema"]), str(source["table"]))
            except (ValueError, KeyError, TypeError) as e:
                raise BadRecord("not_an_event", f"not a change event: {e!r}") from None
            columns = _columns(r)
            key = (ref.schema, ref.table)
            plan = plans.get(key)
            if plan is None:
                plan = plans[key] = Plan(ref, columns)
                pending[key] = {}
            else:
                plan.columns = _merge_columns(plan.columns, columns)
            by_name = {c.name: c for c in plan.columns}
            table_pending = pending[key]
            if op == "t":
                plan.truncate.add(r.partition)
                for k in [k for k, v in table_pending.items() if v[0] == r.partition]:
                    del table_pending[k]
                continue
            if r.key is None:
                raise BadRecord("no_key", "a change event without a key")
            if op in ("c", "u", "r"):
                if not isinstance(event.get("after"), dict):
                    raise BadRecord("not_an_event", f"op {op} without `after`")
                row = _row(event["after"], by_name, dialect)
                row[META[0]] = r.partition
                row[META[1]] = source.get("lsn")
                earlier = table_pending.get(r.key)
                if earlier is not None and earlier[1] == "upsert":
                    # values not sent this time (unchanged TOAST) come from the earlier
                    # event of this poll, which is collapsed away
                    row = {**earlier[2], **row}
                table_pending[r.key] = (r.partition, "upsert", row)
            elif op == "d":
                key_values = json.loads(r.key)
                if not isinstance(key_values, dict):
                    raise BadRecord("no_key", "the key is not a JSON object")
                table_pending[r.key] = (r.partition, "delete",
                                        _row(key_values, by_name, dialect))
            else:
                raise BadRecord("unknown_op", f"op {op!r}")
        except BadRecord as e:
            bad.append((r, e))
    for key, plan in plans.items():
        for _, kind, row in pending[key].values():
            (plan.upserts if kind == "upsert" else plan.deletes).append(row)
    return list(plans.values()), bad


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter("cdc_sink_records", "Change records consumed", registry=registry)
        self.rows = Counter("cdc_sink_rows", "Warehouse rows written, by action",
                            ["action"], registry=registry)
        self.deadletters = Counter("cdc_sink_deadletters", "Records dead-lettered, by reason",
                                   ["reason"], registry=registry)
        self.commits = Counter("cdc_sink_commits", "Offset commits after an apply",
                               registry=registry)
        self.errors = Counter("cdc_sink_errors", "Retried failures, by kind", ["kind"],
                              registry=registry)


class CdcSink:
    def __init__(self, settings: SinkSettings, bus: Bus, target: Callable[[], Target], *,
                 registry: CollectorRegistry | None = None,
                 retriable: tuple[type[BaseException], ...] = (OSError,)) -> None:
        self.settings = settings
        self.bus = bus
        self._make_target = target
        self.target: Target | None = None
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = SinkMetrics(self.registry)
        #: target exceptions that mean "unreachable, retry" (the driver's OperationalError)
        self.retriable = retriable
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdc-sink")
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.http: ServiceHttp | None = None
        self.running = asyncio.Event()

    async def __aenter__(self) -> Self:
        s = self.settings
        if s.http_port is not None:
            self.http = ServiceHttp(s.http_host, s.http_port, self.registry,
                                    {"bus": self.bus.healthy,
                                     "sink": lambda: (self.running.is_set(), "consuming")},
                                    name="cdc-sink")
            await self.http.__aenter__()
        self._task = asyncio.create_task(self._run(), name="cdc-sink")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=60)
            if not done:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.http is not None:
            await self.http.aclose()
        if self.target is not None:
            await self._call(self.target.close)
        self._executor.shutdown(wait=True)

    async def wait(self, stop: asyncio.Event) -> None:
        assert self._task is not None
        stopper = asyncio.create_task(stop.wait(), name="cdc-sink-stop")
        try:
            await asyncio.wait({self._task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if self._task.done():
            self._task.result()

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _run(self) -> None:
        s = self.settings
        backoff = Backoff(base=0.5, cap=30.0)
        retry: tuple[type[BaseException], ...] = (BrokerUnavailable, ConsumerFenced,
                                                  *self.retriable)
        while not self._stop.is_set():
            try:
                if self.target is None:
                    self.target = await self._call(self._make_target)
                await self.bus.ensure_topics(
                    [TopicSpec(s.deadletter_topic, 1, s.replication_factor)])
                async with self.bus.consumer(s.group, list(s.topics)) as consumer:
                    self.running.set()
                    backoff.reset()
                    while not self._stop.is_set():
                        await self.step(consumer)
                    return
            except retry as e:
                self.running.clear()
                self.metrics.errors.labels(type(e).__name__).inc()
                if isinstance(e, self.retriable) and self.target is not None:
                    target, self.target = self.target, None
                    try:
                        await self._call(target.close)
                    except Exception:  # noqa: BLE001 - it is being replaced anyway
                        pass
                delay = backoff.next_delay()
                log.warning("cdc sink: retrying", extra={"fields": {
                    "error": repr(e), "retry_in_s": round(delay, 2)}})
                try:
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                except TimeoutError:
                    pass

    async def step(self, consumer: Consumer) -> None:
        """One poll: plan, apply, dead-letter, commit."""
        records = await consumer.getmany(timeout_ms=self.settings.poll_ms,
                                         max_records=self.settings.max_records)
        if not records:
            return
        self.metrics.records.inc(len(records))
        target = self.target
        assert target is not None
        plans, bad = plan_batch(records, target.dialect)
        try:
            await self._call(self._apply, target, plans)
        except target.data_errors as e:
            # a row the warehouse refuses: find the records at fault, go on with the rest
            # (anything else — down, misconfigured, a bug — is not the data's fault: raised)
            log.warning("cdc sink: batch refused; applying record by record", extra={
                "fields": {"error": repr(e), "records": len(records)}})
            bad += await self._one_by_one(target, records)
        if bad:
            await self._deadletter(bad)
        await consumer.commit(offsets_after(records))
        self.metrics.commits.inc()

    def _apply(self, target: Target, plans: list[Plan]) -> None:
        for plan in plans:
            target.ensure_table(plan.ref, plan.columns)
        target.apply(plans)
        for plan in plans:
            self.metrics.rows.labels("upsert").inc(len(plan.upserts))
            self.metrics.rows.labels("delete").inc(len(plan.deletes))
            self.metrics.rows.labels("truncate").inc(len(plan.truncate))

    async def _one_by_one(self, target: Target, records: Sequence[Record]
                          ) -> list[tuple[Record, BadRecord]]:
        bad = []
        for r in records:
            plans, refused = plan_batch([r], target.dialect)
            if refused:
                continue  # already reported by the batch's plan
            try:
                await self._call(self._apply, target, plans)
            except target.data_errors as e:
                bad.append((r, BadRecord("refused_by_warehouse", repr(e)[:500])))
        return bad

    async def _deadletter(self, bad: list[tuple[Record, BadRecord]]) -> None:
        out: list[OutRecord] = []
        for r, e in bad:
            self.metrics.deadletters.labels(e.reason).inc()
            log.warning("cdc record dead-lettered", extra={"fields": {
                "topic": r.topic, "partition": r.partition, "offset": r.offset,
                "reason": e.reason, "detail": e.detail}})
            out.append((r.key, r.value, [*r.headers, ("reason", e.reason.encode()),
                                         ("detail", e.detail[:500].encode()),
                                         ("topic", r.topic.encode()),
                                         ("partition", str(r.partition).encode()),
                                         ("offset", str(r.offset).encode())]))
        await self.bus.producer().send_batch(self.settings.deadletter_topic, out)
