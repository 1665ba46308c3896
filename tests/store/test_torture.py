"""The store's torture run, short and seeded: processes forked and spawned, kills, corruption, invariants."""

from __future__ import annotations

from pathlib import Path

from polyemb.bench.torture import torture


def test_a_short_torture_run_keeps_every_promise(tmp_path: Path) -> None:
    report = torture(tmp_path, seconds=15, seed=21, spawned=2, forked=2)
    print(report.format())
    # It did what it claims: work of every kind, kills and corruptions among it.
    for op in ("encode", "read", "stats", "compact", "gc"):
        assert report.operations.get(op, 0) > 0, (op, report.operations)
    assert report.processes_forked >= 2 and report.processes_spawned >= 2
    assert report.kills >= 1 and report.corruptions >= 1 and report.texts_stored > 100
    # And every invariant held.
    assert not report.undocumented_errors, report.undocumented_errors
    assert (report.wrong_vectors, report.losses, report.duplicates_after_compact) == (0, 0, 0)
    assert not report.stats_mismatches, report.stats_mismatches
    assert report.ok
