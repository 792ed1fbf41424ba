"""The log store's writer thread and hashed index: same answers as a synchronous store, failures counted."""

from __future__ import annotations

from pathlib import Path

from powerplane.ops.logs import LogMiner
from powerplane.ops.logstore import LogStore

LINES = [
    "Nov 23 19:30:01 hall-1-r00-k00-n1 sshd[4242]: Accepted publickey for alice from 10.0.0.7 port 50022 ssh2",
    "Nov 23 19:30:02 hall-1-r00-k00-n2 systemd[1]: Started Session 77 of User bob.",
    "Nov 23 19:30:03 hall-1-r00-k00-n3 kernel: NVRM: Xid (PCI:0000:3a:00): 48, pid=991, name=python3, "
    "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 1",
    "Nov 23 19:30:04 hall-1-r00-k00-n1 sshd[4243]: Disconnected from user alice 10.0.0.7 port 50022",
]


def test_background_and_sync_stores_agree(tmp_path: Path) -> None:
    queries = ["alice", "sshd", "50022", "publick*", '"double bit"', "host:hall-1-r00-k00-n1 alice", "xid:48",
               "session bob", "uncorrectable dbe", "hall"]  # fmt: skip
    answers = []
    for bg in (True, False):
        m = LogMiner(year=2024)
        with LogStore(tmp_path / f"{bg}.duckdb", background=bg) as store:
            for line in LINES:
                store.add([m.process(line)])
            answers.append([[r["id"] for r in store.search(q)] for q in queries])
            assert store.count() == len(LINES)
    assert answers[0] == answers[1]
    by_q = dict(zip(queries, answers[0], strict=True))
    assert by_q["alice"] == [3, 0] and by_q["sshd"] == [3, 0] and by_q["50022"] == [3, 0]  # number: line scan
    assert by_q["publick*"] == [0] and by_q['"double bit"'] == [2] and by_q["xid:48"] == [2]
    assert by_q["host:hall-1-r00-k00-n1 alice"] == [3, 0] and by_q["session bob"] == [1]
    assert by_q["hall"] == []  # header words are not indexed: the host is the host: filter


def test_a_failed_batch_is_counted_and_the_store_goes_on(tmp_path: Path) -> None:
    m = LogMiner(year=2024)
    with LogStore(tmp_path / "s.duckdb") as store:
        store.add([m.process(LINES[0])])
        store.flush()
        with store._lock:
            store.con.execute("ALTER TABLE log_events RENAME TO log_events_away")
        store.add([m.process(LINES[1]), m.process(LINES[2])])
        store.flush()
        assert store.failed_events == 2 and "log_events" in store.errors[0]
        with store._lock:
            store.con.execute("ALTER TABLE log_events_away RENAME TO log_events")
        store.add([m.process(LINES[3])])
        assert store.count() == 2  # the failed batch rolled back whole; the others are kept
        assert [r["id"] for r in store.search("alice")] == [3, 0]
        assert store.wait_indexed(30) and store.unindexed == 0
        assert [r["id"] for r in store.search("alice")] == [3, 0]


def test_search_is_exact_before_the_index_catches_up_and_after_a_reopen(tmp_path: Path) -> None:
    m = LogMiner(year=2024)
    events = [m.process(line) for line in LINES]
    with LogStore(tmp_path / "s.duckdb") as store:
        with store._lock:  # hold the writer so nothing gets indexed yet
            store.add(events)
            store.add([m.process(LINES[0])])
        store.flush()
        found = [r["id"] for r in store.search("alice")]
        assert found == [3, 4, 0]  # newest first, ties by id
    with LogStore(tmp_path / "s.duckdb") as store:  # reopened: the index catches up from where it was
        assert [r["id"] for r in store.search("alice")] == found
        assert store.wait_indexed(30) and store.unindexed == 0
        assert [r["id"] for r in store.search("alice")] == found
        with store._lock:
            terms = store.con.execute("SELECT count(DISTINCT id) FROM log_terms").fetchall()[0][0]
        assert terms == len(LINES) + 1
