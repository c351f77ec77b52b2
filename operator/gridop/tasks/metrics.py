"""Per-stage task latency, as Prometheus histograms served by each worker.

    gridop_task_queue_wait_seconds{batch}       queued -> claimed (per attempt)
    gridop_task_run_seconds{batch}              handler start -> end
    gridop_task_end_to_end_seconds{batch}       submitted -> result reported, of finished tasks (all attempts)
    gridop_task_attempts_failed_total{batch,kind}  failed attempts: application | timeout | infrastructure
    gridop_task_retries_total{batch}            attempts after the first (tasks run again)
    gridop_tasks_finished_total{batch}          tasks this worker finished

Observed on the worker's hot path, so cheap: a bisect and two additions per observation, one
observation per claimed run (not per task) for the queue wait. A worker serving a pool sees many
batches; it keeps the most recent `MAX_BATCHES` of them (a batch's series leave with it).
"""

from __future__ import annotations

import bisect
import collections
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
           900.0, 3600.0)
MAX_BATCHES = 200


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += n
        self.sum += value * n


class _Batch:
    __slots__ = ("end_to_end", "failed", "finished", "queue_wait", "retries", "run")

    def __init__(self) -> None:
        self.queue_wait = _Histogram()
        self.run = _Histogram()
        self.end_to_end = _Histogram()
        self.failed: collections.Counter[str] = collections.Counter()
        self.retries = 0
        self.finished = 0


class TaskMetrics(Collector):
    """What one worker process observed, per batch; a prometheus_client collector."""

    def __init__(self) -> None:
        self._batches: collections.OrderedDict[str, _Batch] = collections.OrderedDict()
        self._lock = threading.Lock()  # the heartbeat thread records infrastructure failures

    def batch(self, sid: str) -> _Batch:
        b = self._batches.get(sid)
        if b is None:
            with self._lock:
                b = self._batches[sid] = _Batch()
                while len(self._batches) > MAX_BATCHES:
                    self._batches.popitem(last=False)
        else:
            self._batches.move_to_end(sid)
        return b

    def infrastructure_failures(self, sid: str, count: int) -> None:
        if count:
            b = self.batch(sid)
            with self._lock:
                b.failed["infrastructure"] += count

    def collect(self) -> Iterator[Any]:
        with self._lock:
            batches = list(self._batches.items())
        families = {
            "queue_wait": HistogramMetricFamily("gridop_task_queue_wait_seconds", "Time tasks waited in the queue "
                                                "before a worker claimed them (per attempt)", labels=["batch"]),
            "run": HistogramMetricFamily("gridop_task_run_seconds", "Time the handler ran per task", labels=["batch"]),
            "end_to_end": HistogramMetricFamily("gridop_task_end_to_end_seconds", "Time from submission until the "
                                                "task's result was reported (all attempts)", labels=["batch"]),
        }
        failed = CounterMetricFamily("gridop_task_attempts_failed", "Failed task attempts by what they are blamed on",
                                     labels=["batch", "kind"])
        retries = CounterMetricFamily("gridop_task_retries", "Task attempts after the first", labels=["batch"])
        finished = CounterMetricFamily("gridop_tasks_finished", "Tasks this worker finished", labels=["batch"])
        bounds = [*(repr(b) for b in BUCKETS), "+Inf"]
        for sid, b in batches:
            for name, family in families.items():
                h: _Histogram = getattr(b, name)
                cumulative, total = [], 0
                for bound, count in zip(bounds, h.counts, strict=False):
                    total += count
                    cumulative.append((bound, total))
                family.add_metric([sid], cumulative, h.sum)
            for kind, n in b.failed.items():
                failed.add_metric([sid, kind], n)
            retries.add_metric([sid], b.retries)
            finished.add_metric([sid], b.finished)
        yield from families.values()
        yield from (failed, retries, finished)


METRICS = TaskMetrics()
