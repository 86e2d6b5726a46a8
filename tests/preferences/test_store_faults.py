"""PreferenceStore under faults: the disk filling up mid-write, the store turned read-only, the write lock held past
the busy timeout by another process, a damaged file at start. Each time: a clear StoreError ("labels cannot be
saved: ..."), no acknowledged label that was not committed, reads still served, recovery once the fault is gone."""

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from workbench.preferences import Pair, PreferenceStore
from workbench.preferences.store import StoreError

PAIRS = [Pair(f"pair{i}", "p", f"a{i}", f"b{i}", "m", "m", False) for i in range(20)]
CHILD_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[2])}


def new_store(path) -> PreferenceStore:
    store = PreferenceStore(path)
    store.add_pairs(PAIRS)
    for i in range(5):
        store.add_label(f"pair{i}", "A", "ann", f"before-{i}")
    return store


def rows(store) -> int:
    """Label rows (revisions included): what was committed."""
    return store.connection().execute("SELECT COUNT(*) FROM labels").fetchone()[0]


def label(store, i: int):
    return store.add_label(f"pair{i % 20}", "AB"[i % 2], "ann", f"sub-{i}")


@contextlib.contextmanager
def small_filesystem(size: str = "512k"):
    """A size-limited tmpfs (needs root and mount); None where it cannot be mounted here."""
    folder = Path(tempfile.mkdtemp(prefix="wb-full-"))
    mounted = os.geteuid() == 0 and shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True).returncode == 0
    try:
        yield folder if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def fill_up(folder: Path, leave: int) -> Path:
    """Write a filler file until the disk is full, then give back `leave` bytes."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    os.truncate(filler, max(filler.stat().st_size - leave, 0))
    return filler


RLIMIT_CHILD = textwrap.dedent("""
    import os, resource, signal, sys
    from workbench.preferences.store import PreferenceStore, StoreError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
    path = sys.argv[1]
    store = PreferenceStore(path)
    store.count_labels()  # WAL and shared-memory files exist before the limit
    largest = max(os.path.getsize(path + suffix) for suffix in ("", "-wal", "-shm") if os.path.exists(path + suffix))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 12288, hard))  # the disk is "full" a few labels on
    for i in range(100000):
        try:
            store.add_label(f"pair{i % 20}", "AB"[i % 2], "ann", f"sub-{i}")
        except StoreError as error:
            print("refused", i, str(error).replace("\\n", " "), flush=True)
            break
        print("ack", i, flush=True)
    print("reads", store.connection().execute("SELECT COUNT(*) FROM labels").fetchone()[0], flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the fault is gone
    store.add_label(f"pair{i % 20}", "AB"[i % 2], "ann", f"sub-{i}")
    print("recovered", flush=True)
""")


def test_disk_full_mid_write_acknowledges_only_commits_and_recovers(tmp_path):
    with small_filesystem() as folder:
        if folder is None:  # not root here: a file-size limit in a child process gives the same refusals
            new_store(tmp_path / "prefs.sqlite").close()
            out = subprocess.run([sys.executable, "-c", RLIMIT_CHILD, str(tmp_path / "prefs.sqlite")],
                                 capture_output=True, text=True, timeout=120, env=CHILD_ENV)
            lines = out.stdout.splitlines()
            acknowledged = [int(line.split()[1]) for line in lines if line.startswith("ack")]
            refused = next(line for line in lines if line.startswith("refused"))
            assert "labels cannot be saved" in refused and lines[-1] == "recovered", out.stderr[-2000:]
            assert f"reads {5 + len(acknowledged)}" in lines
            with PreferenceStore(tmp_path / "prefs.sqlite") as store:
                stored = {row[0] for row in store.connection().execute("SELECT submission_id FROM labels")}
            failed = int(refused.split()[1])
            assert {f"sub-{i}" for i in acknowledged} | {f"sub-{failed}"} | {f"before-{i}" for i in range(5)} == stored
            return
        store = new_store(folder / "prefs.sqlite")
        filler = fill_up(folder, leave=96 * 1024)  # room for a few commits (each writes ~5 pages)
        acknowledged, failed = [], None
        for i in range(10_000):
            try:
                acknowledged.append(label(store, i).submission_id)
            except StoreError as error:
                failed = (i, str(error))
                break
        assert failed is not None and "labels cannot be saved" in failed[1] and "full" in failed[1]
        assert acknowledged  # the disk filled up mid-way, after some labels were written
        assert not store.has_submission(f"sub-{failed[0]}")  # the refused label was not committed
        assert rows(store) == 5 + len(acknowledged)  # reads go on
        assert store.stats()["n_labels"] == store.count_labels()
        with pytest.raises(StoreError, match="labels cannot be saved"):  # still full: still refused, still nothing
            label(store, failed[0])
        filler.unlink()  # the fault is gone
        assert label(store, failed[0]).submission_id == f"sub-{failed[0]}"  # recovered without a restart
        store.close()
        with PreferenceStore(folder / "prefs.sqlite") as reopened:
            assert reopened.connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = {row[0] for row in reopened.connection().execute("SELECT submission_id FROM labels")}
            assert set(acknowledged) | {f"sub-{failed[0]}"} <= stored and len(stored) == 5 + len(acknowledged) + 1


@contextlib.contextmanager
def read_only(path: Path):
    """The store file loses its write permission: chmod, or (root ignores modes) the immutable attribute."""
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
            pytest.skip("root without chattr +i here: no way to make a file read-only to this process")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        return
    path.chmod(0o444)
    try:
        yield
    finally:
        path.chmod(0o644)


def test_read_only_store_refuses_writes_serves_reads_and_recovers(tmp_path):
    path = tmp_path / "prefs.sqlite"
    store = new_store(path)
    store.close()  # the next use opens the file again, now read-only
    with read_only(path):
        with pytest.raises(StoreError, match=r"labels cannot be saved: .* is read-only .*Nothing was saved"):
            label(store, 7)
        assert store.count_labels() == 5 and not store.has_submission("sub-7")  # reads go on
        assert PreferenceStore(path, read_only=True).count_labels() == 5  # and a reader can still open it
    assert label(store, 7).submission_id == "sub-7" and store.count_labels() == 6  # recovered by itself
    store.close()


LOCK_HOLDER = textwrap.dedent("""
    import sqlite3, sys
    connection = sqlite3.connect(sys.argv[1], isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")  # another process takes the store's write lock and keeps it
    print("locked", flush=True)
    sys.stdin.readline()
    connection.execute("ROLLBACK")
""")


def test_write_lock_held_past_the_busy_timeout(tmp_path):
    path = tmp_path / "prefs.sqlite"
    new_store(path).close()
    store = PreferenceStore(path, busy_timeout_s=0.3)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(StoreError, match=r"labels cannot be saved: another process has held .* over 0.3 s"):
            label(store, 8)
        assert store.count_labels() == 5 and not store.has_submission("sub-8")  # readers are not blocked
    finally:
        holder.communicate("release\n", timeout=30)
    assert label(store, 8).submission_id == "sub-8" and store.count_labels() == 6
    store.close()


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "garbage"])
def test_damaged_store_is_refused_at_start(tmp_path, damage):
    path = tmp_path / "prefs.sqlite"
    store = new_store(path)
    with store.transaction():  # enough pages that damage lands in the tables, in one commit
        for i in range(300):
            store.add_label(f"pair{i % 20}", "A", f"ann{i}", f"more-{i}", comment="x" * 300)
    store.close()
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "overwrite":
        data[4096:12288] = os.urandom(8192)  # pages of the tables, after the header page
    else:
        data = bytearray(b"garbage" * 100)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"is damaged .*Move it aside|not a preference store|is damaged"):
        PreferenceStore(path)
    with pytest.raises(StoreError):
        PreferenceStore(path, read_only=True)
    assert not any(p.name.endswith("-journal") for p in tmp_path.iterdir())


def test_reading_commands_never_create_a_store(tmp_path):
    with pytest.raises(StoreError, match="no such preference store"):
        PreferenceStore(tmp_path / "missing" / "prefs.sqlite", read_only=True)
    assert list(tmp_path.iterdir()) == []
    path = tmp_path / "prefs.sqlite"
    new_store(path).close()
    with PreferenceStore(path, read_only=True) as reader:
        assert reader.count_labels() == 5
        with pytest.raises(StoreError, match="read-only"):
            label(reader, 1)
