"""Hall trackers: each hall is one durable JetStream pull consumer, served by whichever tracker holds its lease.

A tracker process is given the halls it may serve. For each it tries to take the hall's lease (a key in a
key-value bucket whose entries expire ``lease_ttl_s`` after their last renewal); the holder renews it every
``lease_ttl_s / 4`` and serves the hall, the others wait. When the holder dies (even by SIGKILL) its lease expires
and another tracker takes the hall: it restores the accept state from the hall's last rollup and pulls from the
durable consumer, which redelivers every frame the dead tracker had not acknowledged. Frames are acknowledged
(one by one, in order, once every tick they hold is published) only after their rollup is stored, so nothing is
lost; redelivered frames that were already published are rejected as duplicates, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, KeyValueError, NotFoundError
from nats.js.kv import KeyValue

from powerplane.bus import codec, subjects
from powerplane.bus.hall import HallAggregator
from powerplane.bus.jet import connect, ensure_streams, lease_bucket
from powerplane.core.clock import perf_counter_s
from powerplane.topology import Topology

log = logging.getLogger(__name__)
WRONG_LAST_SEQUENCE = 10071  # JetStream: Nats-Expected-Last-Subject-Sequence did not match


@dataclass
class HallStats:
    leader: bool = False
    takeovers: int = 0
    leases_lost: int = 0
    rollups: int = 0
    late_parts: int = 0
    resyncs: int = 0
    messages: int = 0
    acquired_at_s: float = 0.0  # perf counter when this tracker last took the hall
    events: list[str] = field(default_factory=list)


class HallWorker:
    """Serves one hall for one tracker process while it holds the hall's lease."""

    def __init__(self, tracker: Tracker, hall: int, *, tick_s: float, close_after_ticks: int, timeout_s: float) -> None:
        self.tr = tracker
        self.hall = hall
        self.name = tracker.topo.hall_names[hall]
        self.agg_args = {"tick_s": tick_s, "close_after_ticks": close_after_ticks, "timeout_s": timeout_s}
        self.agg = HallAggregator(tracker.topo, hall, **self.agg_args)  # type: ignore[arg-type]
        self.stats = HallStats()
        self.key = subjects.token(self.name)
        self.revision = 0
        self.epoch = 0
        self.serial = 0
        self.last_seq = 0  # stream sequence of the hall's last stored rollup, as this tracker knows it
        self.sub: JetStreamContext.PullSubscription | None = None
        self.pending: deque[tuple[Msg, int]] = deque()

    # ------------------------------------------------------------------------------------------ lease

    async def try_acquire(self, kv: KeyValue) -> bool:
        try:
            self.revision = await kv.create(self.key, self.tr.ident.encode())
        except KeyValueError:
            return False
        except Exception as exc:  # the bus is down: try again later
            log.debug("lease %s: %s", self.name, exc)
            return False
        self.epoch = self.revision
        return True

    async def renew(self, kv: KeyValue) -> bool:
        try:
            self.revision = await kv.update(self.key, self.tr.ident.encode(), last=self.revision)
            return True
        except KeyValueError:
            return False  # someone else holds it now, or it expired
        except Exception as exc:  # bus down: keep serving what we hold; the lease will tell when it is back
            log.debug("renew %s: %s", self.name, exc)
            return True

    async def release(self, kv: KeyValue) -> None:
        try:
            await kv.delete(self.key, last=self.revision)
        except Exception as exc:
            log.debug("release %s: %s", self.name, exc)

    # ------------------------------------------------------------------------------------------ serving

    async def start_serving(self) -> None:
        js = self.tr.js
        site = self.tr.topo.site_name
        self.agg = HallAggregator(self.tr.topo, self.hall, **self.agg_args)  # type: ignore[arg-type]
        await self._restore_last()
        self.pending.clear()
        cfg = ConsumerConfig(
            durable_name=subjects.consumer_name(self.name),
            filter_subject=subjects.tel_hall_filter(site, self.name),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.tr.ack_wait_s,
            max_ack_pending=1_000_000,
            deliver_policy=DeliverPolicy.ALL,
            max_waiting=64,
        )
        self.sub = await js.pull_subscribe(
            subjects.tel_hall_filter(site, self.name),
            durable=subjects.consumer_name(self.name),
            stream=subjects.tel_stream(site),
            config=cfg,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        self.stats.leader = True
        self.stats.takeovers += 1
        self.stats.acquired_at_s = perf_counter_s()
        self.stats.events.append(f"{perf_counter_s() - self.tr.t0_s:.2f} s: took {self.name} (epoch {self.epoch})")
        log.info("tracker %s took hall %s (epoch %d)", self.tr.ident, self.name, self.epoch)

    async def _restore_last(self) -> None:
        """Take the accept state, and the stream sequence, of the hall's last stored rollup (none: a fresh hall)."""
        site = self.tr.topo.site_name
        try:
            raw = await self.tr.js.get_last_msg(subjects.rollup_stream(site), subjects.rollup_subject(site, self.name))
        except NotFoundError:
            self.last_seq = 0
            return
        self.last_seq = int(raw.seq or 0)
        if raw.data:
            self.agg.restore(codec.HallRollup.decode(raw.data))

    async def resync(self, why: str) -> None:
        """Restore the accept state from the hall's last stored rollup; open frames come again by redelivery."""
        self.stats.events.append(f"{perf_counter_s() - self.tr.t0_s:.2f} s: resync {self.name} ({why})")
        self.stats.resyncs += 1
        await self._restore_last()
        self.pending.clear()

    async def stop_serving(self, reason: str) -> None:
        self.stats.leader = False
        self.stats.leases_lost += 1
        self.stats.events.append(f"{perf_counter_s() - self.tr.t0_s:.2f} s: lost {self.name}: {reason}")
        log.warning("tracker %s lost hall %s: %s", self.tr.ident, self.name, reason)
        sub, self.sub = self.sub, None
        self.pending.clear()
        self.agg.reset_open()
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe %s: %s", self.name, exc)

    async def step(self, batch: int) -> None:
        """Fetch one batch, aggregate it, publish what is due, acknowledge what is published."""
        assert self.sub is not None
        try:
            # A pull request lingers until the batch is full or it expires: the expiry bounds the added latency.
            msgs = await self.sub.fetch(batch, timeout=self.tr.fetch_timeout_s)
        except (NatsTimeoutError, TimeoutError):
            msgs = []
        for m in msgs:
            self.stats.messages += 1
            try:
                recs = codec.decode_frames(m.data)
            except codec.FrameError as exc:
                self.agg.rejected[exc.reason] += 1
                self.pending.append((m, -(2**62)))
                continue
            self.pending.append((m, self.agg.add(recs)))
        await self.publish_due(force=False)

    async def publish_due(self, force: bool) -> None:
        js = self.tr.js
        subject = subjects.rollup_subject(self.tr.topo.site_name, self.name)
        for w in self.agg.due(force):
            r = self.agg.rollup(w, self.epoch)
            # The id repeats only when a publish is retried after no ack came (it may be stored): JetStream then
            # keeps one copy. A duplicate means the stored copy may hold other frames than this retry: take the
            # accept state from the bus again and let the open frames be redelivered.
            # Fencing: the rollup is stored only if the hall's last stored rollup is still the one this tracker
            # built on. A tracker that lost its lease without knowing it yet (stalled past the lease) is refused
            # here, so two trackers can never both count the same frames.
            msg_id = f"{self.key}.{self.epoch}.{self.serial}"
            headers = {"Nats-Msg-Id": msg_id, "Nats-Expected-Last-Subject-Sequence": str(self.last_seq)}
            try:
                ack = await js.publish(subject, r.encode(), timeout=5.0, headers=headers)
            except APIError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
                self.serial += 1
                await self.resync("another tracker published")
                return
            self.serial += 1
            if ack.duplicate:
                await self.resync("duplicate")
                return
            self.last_seq = int(ack.seq)
            self.agg.published(w)
            self.stats.rollups += 1
            self.stats.late_parts += int(w.late)
        # Explicit acks, message by message: an ack-all would also acknowledge frames dropped after an outage
        # that are still waiting for their redelivery.
        low = self.agg.open_low_tick()
        while self.pending and self.pending[0][1] < low:
            await self.pending.popleft()[0].ack()


class Tracker:
    """One tracker process: serves, among ``halls`` (names), those whose lease it holds."""

    def __init__(
        self,
        url: str,
        topo: Topology,
        halls: list[str] | None = None,
        *,
        ident: str | None = None,
        lease_ttl_s: float = 2.0,
        ack_wait_s: float = 2.0,
        tick_s: float = 0.1,
        close_after_ticks: int = 3,
        timeout_s: float = 1.0,
        batch: int = 1000,
        fetch_timeout_s: float = 0.02,
        prefer: list[str] | None = None,
        standby_delay_s: float = 0.5,
    ) -> None:
        self.url = url
        self.topo = topo
        names = halls or list(topo.hall_names)
        unknown = [h for h in names if h not in topo.hall_names]
        if unknown:
            raise ValueError(f"unknown hall {unknown[0]!r}; this site has {', '.join(topo.hall_names)}")
        self.ident = ident or f"{socket.gethostname()}-{os.getpid()}"
        self.lease_ttl_s = float(lease_ttl_s)
        self.ack_wait_s = float(ack_wait_s)
        self.batch = int(batch)
        self.fetch_timeout_s = float(fetch_timeout_s)
        self.workers = [
            HallWorker(
                self, topo.hall_names.index(h), tick_s=tick_s, close_after_ticks=close_after_ticks, timeout_s=timeout_s
            )
            for h in names
        ]
        # Halls not preferred are taken only after their lease has been free ``standby_delay_s``: on a cold start
        # each tracker gets its own halls, and a dead tracker's halls still move to the survivors.
        self.prefer = set(prefer) if prefer else {w.name for w in self.workers}
        bad = self.prefer - set(names)
        if bad:
            raise ValueError(f"preferred hall {sorted(bad)[0]!r} is not among the halls this tracker serves")
        self.standby_delay_s = float(standby_delay_s)
        self._free_since: dict[str, float] = {}
        self._stop = asyncio.Event()
        self.t0_s = perf_counter_s()
        self.nc: Client | None = None
        self._js: JetStreamContext | None = None

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "the tracker is not running"
        return self._js

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict[str, Any]:
        return {
            "ident": self.ident,
            "halls": {
                w.name: {
                    "leader": w.stats.leader,
                    "takeovers": w.stats.takeovers,
                    "leases_lost": w.stats.leases_lost,
                    "rollups": w.stats.rollups,
                    "late_parts": w.stats.late_parts,
                    "resyncs": w.stats.resyncs,
                    "messages": w.stats.messages,
                    "frames_accepted": w.agg.accepted,
                    "gaps_skipped": w.agg.gaps_skipped,
                    "rejected": dict(w.agg.rejected),
                    "events": w.stats.events[-20:],
                }
                for w in self.workers
            },
        }

    async def _lease_loop(self, kv: KeyValue) -> None:
        period = self.lease_ttl_s / 4.0
        while not self._stop.is_set():
            for w in self.workers:
                if w.sub is None:
                    if w.name not in self.prefer and not await self._free_long_enough(kv, w):
                        continue
                    if await w.try_acquire(kv):
                        try:
                            await w.start_serving()
                        except Exception as exc:
                            log.warning("could not start serving %s: %s", w.name, exc)
                            await w.release(kv)
                elif not await w.renew(kv):
                    await w.stop_serving("lease taken or expired")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), period)

    async def _free_long_enough(self, kv: KeyValue, w: HallWorker) -> bool:
        try:
            await kv.get(w.key)
            self._free_since.pop(w.name, None)
            return False
        except KeyValueError:  # not found (expired or deleted): free
            now = perf_counter_s()
            return now - self._free_since.setdefault(w.name, now) >= self.standby_delay_s
        except Exception:  # bus down
            return False

    async def _serve_hall(self, w: HallWorker) -> None:
        """One task per hall, so a hall waiting for frames never holds up another."""
        while not self._stop.is_set():
            if w.sub is None:
                await asyncio.sleep(0.05)
                continue
            try:
                await w.step(self.batch)
            except Exception as exc:  # bus outage mid-fetch or mid-publish: open ticks are redelivered
                log.info("hall %s: %s; continuing", w.name, exc)
                w.agg.reset_open()
                w.pending.clear()
                await asyncio.sleep(0.1)

    async def run(self, duration_s: float | None = None) -> dict[str, Any]:
        self.nc = await connect(self.url, f"powerplane-tracker-{self.ident}")
        self._js = self.nc.jetstream()
        await ensure_streams(self._js, self.topo.site_name)
        kv = await lease_bucket(self._js, self.topo.site_name, self.lease_ttl_s)
        tasks = [asyncio.create_task(self._lease_loop(kv))]
        tasks += [asyncio.create_task(self._serve_hall(w)) for w in self.workers]
        try:
            if duration_s is None:
                await self._stop.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), duration_s)
        finally:
            self._stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in self.workers:
                if w.sub is not None:
                    try:
                        await w.publish_due(force=True)
                    except Exception as exc:
                        log.warning("final publish of %s failed (its frames are redelivered): %s", w.name, exc)
                    await w.release(kv)
            await self.nc.close()
        return self.stats()
