"""The connectors process: polling loops and webhook receivers behind one HTTP server.

    async with open_bus(cfg.cloud_config()) as bus, \\
            ConnectorService.from_config(cfg, bus) as service:
        await stop.wait()

What it runs (from `secondary.yaml`, section `connectors`):

* for every GitHub repository and resource (`events`, `commits`): a `GithubPoller` in a
  `PollLoop`, task "poll-github:<repo>:<resource>", all sharing one `ApiClient` — one token,
  one rate-limit budget;
* the Stripe receiver's route (`stripe.path`) on `connectors.host:port`, next to `/metrics`
  and `/healthz` (healthy: the bus answers, the topics exist, and no poller's last round
  failed).

Start-up: the topics are created (capped, jittered backoff while the bus is down; webhook
deliveries meanwhile get 503, which their senders retry), then the poll loops start.
Shutdown: the HTTP server stops taking deliveries and finishes those in progress, the loops
finish their round's current request and stop, the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from prometheus_client import CollectorRegistry

from cloud.bus import TopicSpec
from cloud.bus.base import Bus
from cloud.connectors.client import ApiClient, ApiMetrics
from cloud.connectors.github import GithubPoller
from cloud.connectors.poller import Delivery, PollLoop, PollMetrics
from cloud.connectors.store import ConnectorStore
from cloud.connectors.stripe import StripeReceiver, WebhookMetrics
from cloud.errors import FieldlinkError
from cloud.http import ServiceHttp
from edge.backoff import Backoff

__all__ = ["ConnectorService"]

log = logging.getLogger("fieldlink.cloud.connectors")


class ConnectorService:
    def __init__(self, bus: Bus, store: ConnectorStore, *, host: str = "127.0.0.1",
                 port: int = 0, topics: list[TopicSpec] | None = None,
                 max_body_bytes: int = 1024 * 1024,
                 registry: CollectorRegistry | None = None) -> None:
        self.bus = bus
        self.store = store
        self.host = host
        self.port = port
        self.topics = list(topics or [])
        self.max_body_bytes = max_body_bytes
        self.registry = registry if registry is not None else CollectorRegistry()
        self.api_metrics = ApiMetrics(self.registry)
        self.poll_metrics = PollMetrics(self.registry)
        self.webhook_metrics = WebhookMetrics(self.registry)
        self.delivery = Delivery(bus, store, self.poll_metrics)
        self.loops: list[PollLoop] = []
        self.receivers: list[StripeReceiver] = []
        self.clients: list[ApiClient] = []
        self.http: ServiceHttp | None = None
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_config(cls, cfg: Any, bus: Bus) -> ConnectorService:
        """From an `edge.config.secondary.SecondaryConfig`."""
        c = cfg.connectors
        rf = cfg.kafka.replication_factor
        topics = [TopicSpec(c.deadletter_topic, 1, rf)]
        service = cls(bus, ConnectorStore(cfg.connectors_state_file), host=c.host,
                      port=c.port, topics=topics, max_body_bytes=c.max_body_bytes)
        gh = c.github
        if gh.enabled and gh.repos:
            headers = {"Accept": "application/vnd.github+json",
                       "X-GitHub-Api-Version": "2022-11-28"}
            if gh.token is not None:
                headers["Authorization"] = f"Bearer {gh.token.get_secret_value()}"
            api = service.add_client(ApiClient(
                "github", headers=headers, timeout_s=c.timeout_s, max_attempts=c.max_attempts,
                max_rate_wait_s=c.max_rate_wait_s,
                backoff=Backoff(base=c.backoff_base_s, cap=c.backoff_cap_s)))
            for resource in gh.resources:
                topics.append(TopicSpec(f"{gh.topic_prefix}.{resource}", 3, rf))
                for repo in gh.repos:
                    service.add_poller(GithubPoller(
                        api, service.delivery, repo=repo, resource=resource,
                        base_url=gh.base_url, per_page=gh.per_page,
                        topic_prefix=gh.topic_prefix), interval_s=gh.poll_interval_s,
                        backoff=Backoff(base=c.backoff_base_s, cap=c.backoff_cap_s))
        st = c.stripe
        if st.enabled and st.signing_secret is not None:
            topics.append(TopicSpec(st.topic, 3, rf))
            service.add_receiver(StripeReceiver(
                bus, service.store, secrets=[st.signing_secret.get_secret_value()],
                topic=st.topic, deadletter_topic=c.deadletter_topic, path=st.path,
                tolerance_s=st.tolerance_s, metrics=service.webhook_metrics))
        return service

    def add_client(self, client: ApiClient) -> ApiClient:
        client.metrics = self.api_metrics
        self.clients.append(client)
        return client

    def add_poller(self, poller: Any, *, interval_s: float,
                   backoff: Backoff | None = None) -> PollLoop:
        loop = PollLoop(poller, interval_s=interval_s, metrics=self.poll_metrics,
                        backoff=backoff)
        self.loops.append(loop)
        return loop

    def add_receiver(self, receiver: StripeReceiver) -> None:
        receiver.metrics = self.webhook_metrics
        self.receivers.append(receiver)

    @property
    def url(self) -> str:
        if self.http is None:
            raise RuntimeError("the connectors service is not running")
        return self.http.url

    async def wait_ready(self, within_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self._ready.wait()
        return self._ready.is_set()

    def _healthy(self) -> tuple[bool, str]:
        if not self._ready.is_set():
            return False, "creating topics"
        failing = [f"{loop.poller.name}: {loop.last_error}" for loop in self.loops
                   if loop.last_error]
        return (not failing, "; ".join(failing) or f"{len(self.loops)} pollers, "
                                                   f"{len(self.receivers)} receivers")

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        for client in self.clients:
            await client.__aenter__()
        routes: list[web.RouteDef] = []
        for receiver in self.receivers:
            routes += [web.post(receiver.path, self._gate(receiver))]
        self.http = ServiceHttp(self.host, self.port, self.registry,
                                {"bus": self.bus.healthy, "connectors": self._healthy},
                                routes, client_max_size=self.max_body_bytes,
                                name="connectors")
        await self.http.__aenter__()
        self._tasks.append(asyncio.create_task(self._start(), name="connectors-start"))
        return self

    def _gate(self, receiver: StripeReceiver) -> Any:
        async def handle(request: web.Request) -> web.Response:
            if not self._ready.is_set():
                return web.json_response({"error": "not_ready"}, status=503,
                                         headers={"Retry-After": "5"})
            return await receiver.handle(request)
        return handle

    async def _start(self) -> None:
        backoff = Backoff(base=0.5, cap=30.0)
        while not self._stop.is_set():
            try:
                await self.bus.ensure_topics(self.topics)
                break
            except FieldlinkError as e:
                delay = backoff.next_delay()
                log.warning("cannot create the connector topics", extra={"fields": {
                    "error": str(e), "retry_in_s": round(delay, 2)}})
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
        if self._stop.is_set():
            return
        self._ready.set()
        for loop in self.loops:
            self._tasks.append(asyncio.create_task(loop.run(self._stop),
                                                   name=f"poll-{loop.poller.name}"))

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self.http is not None:
            await self.http.aclose()
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=30)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self.clients:
            await client.__aexit__(None, None, None)
        await asyncio.to_thread(self.store.close)
