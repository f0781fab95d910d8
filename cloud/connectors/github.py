"""A GitHub REST poller: a repository's commits and events, incrementally, into the bus.

    poller = GithubPoller(api, delivery, repo="acme/widgets", resource="commits",
                          base_url="https://api.github.com")

Commits — `GET {base}/repos/{repo}/commits?since=<cursor>&per_page=N`, following the `Link`
header's `rel="next"` to the last page.  Each page is delivered as it arrives (memory stays
one page even on a first run over a long history); the cursor — the newest committer date
seen — is saved only after the last page, so a round cut short starts over from the old
cursor and the already-delivered shas are dropped as duplicates (`since` is inclusive:
the boundary commit comes back every round and is dropped the same way).

Events — `GET {base}/repos/{repo}/events?per_page=N` with `If-None-Match: <etag>` of the
previous round: an unchanged feed answers 304 (which GitHub does not count against the rate
limit).  Events come newest first and have increasing numeric ids: pages are followed until
an id at or below the cursor's `last_id`, then the new events are delivered oldest first.
`X-Poll-Interval` (seconds) is honoured as the minimum time to the next round.  The feed only
keeps about 300 events / 90 days: a connector down for longer misses what fell off (logged
and counted in `gaps` when the oldest event fetched is still newer than the cursor).

Records: key = sha or event id; value = JSON
`{"source": "github", "resource": ..., "repo": ..., "id": ..., "fetched_ms": ..., "data": <the
API object as returned>}`; headers `connector`, `repo`, `resource`.  Topics:
`<topic_prefix>.commits` and `<topic_prefix>.events`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from cloud.connectors.client import ApiClient
from cloud.connectors.poller import Delivery, Item
from edge.clock import Clock, SystemClock

__all__ = ["GithubPoller"]

log = logging.getLogger("fieldlink.cloud.connectors")


class GithubPoller:
    def __init__(self, api: ApiClient, delivery: Delivery, *, repo: str, resource: str,
                 base_url: str = "https://api.github.com", per_page: int = 100,
                 topic_prefix: str = "saas.github", since: str | None = None,
                 clock: Clock | None = None) -> None:
        if resource not in ("commits", "events"):
            raise ValueError(f"unknown GitHub resource {resource!r}")
        self.api = api
        self.delivery = delivery
        self.repo = repo
        self.resource = resource
        self.base_url = base_url.rstrip("/")
        self.per_page = per_page
        self.topic = f"{topic_prefix}.{resource}"
        self.initial_since = since
        self.clock = clock or SystemClock()
        self.name = f"github:{repo}:{resource}"
        self.gaps = 0
        self._poll_interval_s: float | None = None

    @property
    def scope(self) -> str:
        return self.name

    def next_poll_s(self) -> float | None:
        return self._poll_interval_s

    def _item(self, item_id: str, data: Any) -> Item:
        value = json.dumps({"source": "github", "resource": self.resource, "repo": self.repo,
                            "id": item_id, "fetched_ms": self.clock.now_ms(), "data": data},
                           separators=(",", ":"), ensure_ascii=False).encode()
        return (item_id, item_id.encode(), value,
                [("connector", b"github"), ("repo", self.repo.encode()),
                 ("resource", self.resource.encode())])

    async def poll(self) -> int:
        if self.resource == "commits":
            return await self._commits()
        return await self._events()

    async def _cursor(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.delivery.store.cursor, self.scope)

    async def _commits(self) -> int:
        cursor = await self._cursor()
        since = cursor.get("since") or self.initial_since
        params = {"per_page": str(self.per_page)}
        if since:
            params["since"] = since
        url: str | None = f"{self.base_url}/repos/{self.repo}/commits"
        newest = since or ""
        delivered = 0
        first = True
        while url:
            resp = await self.api.get(url, params=params if first else None)
            first = False
            commits = resp.json if isinstance(resp.json, list) else []
            items = []
            for c in commits:
                sha = c.get("sha")
                if not isinstance(sha, str):
                    continue
                date = (((c.get("commit") or {}).get("committer") or {}).get("date")) or ""
                if isinstance(date, str) and date > newest:
                    newest = date
                items.append(self._item(sha, c))
            delivered += await self.delivery.deliver(self.scope, self.topic, items)
            url = resp.links.get("next")
        if newest and newest != since:
            await self.delivery.deliver(self.scope, self.topic, [], cursor={"since": newest})
        return delivered

    async def _events(self) -> int:
        cursor = await self._cursor()
        last_id = int(cursor.get("last_id", 0))
        etag = cursor.get("etag")
        url: str | None = None
        resp = await self.api.get(f"{self.base_url}/repos/{self.repo}/events", params={"per_page": str(self.per_page)},
                                  headers={"If-None-Match": etag} if etag else None)
        interval = resp.headers.get("X-Poll-Interval")
        self._poll_interval_s = float(interval) if interval and interval.isdigit() else None
        if resp.status == 304:
            return 0
        new_etag = resp.headers.get("ETag")
        fresh: list[dict[str, Any]] = []
        reached = False
        while True:
            for event in resp.json if isinstance(resp.json, list) else []:
                try:
                    event_id = int(event["id"])
                except (KeyError, TypeError, ValueError):
                    continue
                if event_id <= last_id:
                    reached = True
                    continue
                fresh.append(event)
            url = resp.links.get("next")
            if reached or not url:
                break
            resp = await self.api.get(url)
        if last_id and fresh and not reached:
            self.gaps += 1
            log.warning("github event feed: events between the cursor and the oldest event "
                        "still listed were missed", extra={"fields": {
                            "connector": self.name, "cursor": last_id}})
        fresh.sort(key=lambda e: int(e["id"]))
        new_cursor: dict[str, Any] = {"last_id": max([last_id] + [int(e["id"]) for e in fresh])}
        if new_etag:
            new_cursor["etag"] = new_etag
        return await self.delivery.deliver(self.scope, self.topic,
                                           [self._item(str(e["id"]), e) for e in fresh],
                                           cursor=new_cursor)
