"""TaskBatch rules: workers from queue depth, phases from counters."""

import datetime

from gridop.api.v1beta1.taskbatch import TaskBatchSpec, TaskBatchStatus, TaskCounts
from gridop.batches.taskbatch_rules import decide, desired_workers

NOW = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
META = {"name": "b", "namespace": "ns", "uid": "u", "generation": 2}


def spec(**kw) -> TaskBatchSpec:
    return TaskBatchSpec.model_validate({"handler": "m:f", "workers": {"min": 1, "max": 5, "tasksPerWorker": 100}, **kw})


def run(counts: TaskCounts, data_meta: dict, status: TaskBatchStatus | None = None, **kw):
    return decide(META, spec(**kw), status or TaskBatchStatus(), counts, data_meta, data_plane_error=None, now=NOW, resync=30)


def test_workers_follow_the_queue_within_bounds() -> None:
    assert desired_workers(spec(), TaskCounts(pending=0)) == 0
    assert desired_workers(spec(), TaskCounts(pending=1)) == 1
    assert desired_workers(spec(), TaskCounts(pending=250, processing=50)) == 3
    assert desired_workers(spec(), TaskCounts(pending=10_000)) == 5


def test_a_half_seen_submission_never_finishes_the_batch() -> None:
    # counters read before the submission, meta after it: nothing is accounted for yet
    d = run(TaskCounts(total=50), {"total": "50", "submitted": "50"})
    assert d.status.phase == "Running"


def test_phases_from_counters() -> None:
    meta = {"total": "10", "submitted": "10"}
    assert run(TaskCounts(total=0), {}).status.phase == "Pending"
    d = run(TaskCounts(pending=4, processing=2, finished=4, total=10), meta)
    assert (d.status.phase, d.parallelism, d.status.start_time) == ("Running", 1, NOW)
    d = run(TaskCounts(finished=10, total=10), meta)
    assert (d.status.phase, d.parallelism, d.status.completion_time) == ("Succeeded", 0, NOW)
    d = run(TaskCounts(finished=8, failed=2, total=10), meta)
    assert d.status.phase == "Failed" and "2 of 10 tasks failed" in d.status.conditions[0].message
    d = run(TaskCounts(pending=3, total=10, finished=7), meta, suspend=True)
    assert (d.status.phase, d.parallelism, d.set_suspended) == ("Suspended", 0, True)
    d = run(TaskCounts(pending=3, total=10, finished=7), meta, cancel=True)
    assert d.cancel_tasks is True
    d = run(TaskCounts(cancelled=3, finished=7, total=10), {**meta, "cancelled": "1"}, cancel=True)
    assert d.status.phase == "Cancelled"


def test_finished_batches_are_deleted_after_their_ttl() -> None:
    done = TaskBatchStatus(phase="Succeeded", completion_time=NOW - datetime.timedelta(seconds=61))
    assert run(TaskCounts(finished=1, total=1), {"total": "1", "submitted": "1"}, done, ttlSecondsAfterFinished=60).delete_batch
    recent = TaskBatchStatus(phase="Succeeded", completion_time=NOW - datetime.timedelta(seconds=10))
    d = run(TaskCounts(finished=1, total=1), {"total": "1", "submitted": "1"}, recent, ttlSecondsAfterFinished=60)
    assert not d.delete_batch and 49 < d.requeue_after <= 50
