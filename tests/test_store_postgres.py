"""What only the PostgreSQL store has, on a real server: versioned migrations,
LISTEN/NOTIFY, a connection lost mid-enrollment, a server that is down, the trainers'
advisory lock, and the trainer service waiting for PostgreSQL at start and then
following enrollments made by another process. (The store's behaviour common to SQLite
and PostgreSQL is in test_store.py, run on both.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from e2e_support import Installation, free_port, until
from postgres_support import PostgresCluster, start_cluster

from enrollment import postgres
from enrollment.errors import StoreError, StoreUnavailableError
from enrollment.store import EnrollmentStore, Quality
from trainer.errors import TrainerBusyError
from trainer.lock import StoreTrainerLock

LANDMARKS = np.array([[20, 24], [44, 24], [32, 36], [22, 48], [42, 48]], np.float32)
QUALITY = Quality(face_px=120.0, sharpness=300.0, frontalness=0.9, score=0.8)


def _crop(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 60, 3), np.uint8)


def _one(url: str, sql: str, params: tuple[object, ...] = ()) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchone()[0]


def test_a_new_database_gets_the_schema_and_an_older_one_is_migrated(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two boxes opening one empty database at once: the migration runs once
    stores: list[EnrollmentStore] = []
    openers = [threading.Thread(target=lambda: stores.append(EnrollmentStore(postgres_url)))
               for _ in range(3)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join()
    assert len(stores) == 3
    for store in stores:
        store.close()
    assert _one(postgres_url, "SELECT array_agg(version) FROM schema_migrations") == [1]
    with EnrollmentStore(postgres_url) as store:
        ada = store.add_person("Ada")

    # a later facestream adds a migration: opening applies it and keeps the data
    later = (*postgres.MIGRATIONS, "ALTER TABLE people ADD COLUMN note TEXT")
    monkeypatch.setattr(postgres, "MIGRATIONS", later)
    with EnrollmentStore(postgres_url) as store:
        assert store.find_person("Ada") == ada
    assert _one(postgres_url, "SELECT max(version) FROM schema_migrations") == 2
    assert _one(postgres_url, "SELECT count(*) FROM information_schema.columns "
                "WHERE table_name = 'people' AND column_name = 'note'") == 1

    # and the facestream before it refuses that store instead of misreading it
    monkeypatch.setattr(postgres, "MIGRATIONS", later[:1])
    with pytest.raises(StoreError, match=r"newer facestream \(schema 2, this one reads up to 1\)"):
        EnrollmentStore(postgres_url)


def test_a_server_that_is_not_there_is_a_clear_error_without_the_password() -> None:
    url = f"postgresql://facestream:s3cret@127.0.0.1:{free_port()}/facestream"
    with pytest.raises(StoreUnavailableError) as refused:
        EnrollmentStore(url)
    message = str(refused.value)
    assert "unreachable" in message and "127.0.0.1" in message
    assert "s3cret" not in message and "facestream:***@" in message
    # libpq reads a password in the query too
    url = f"postgresql://facestream@127.0.0.1:{free_port()}/facestream?password=s3cret&x=1"
    with pytest.raises(StoreUnavailableError) as refused:
        EnrollmentStore(url)
    assert "s3cret" not in str(refused.value) and "password=***&x=1" in str(refused.value)
    with pytest.raises(StoreError, match="must be postgresql://"):
        EnrollmentStore("mysql://127.0.0.1/facestream")


def test_a_change_wakes_a_waiting_reader_at_once(postgres_url: str) -> None:
    with EnrollmentStore(postgres_url) as waiter, EnrollmentStore(postgres_url) as writer:
        revision = waiter.revision()
        waiter.wait_for_change(revision, timeout=0.2)  # nothing changed: waits it out
        woke: list[float] = []

        def wait() -> None:
            started = time.monotonic()
            waiter.wait_for_change(revision, timeout=60)
            woke.append(time.monotonic() - started)

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.3)  # the waiter is listening by now
        writer.add_person("Ada")
        thread.join(timeout=30)
        assert woke and woke[0] < 30, "the waiter did not wake on NOTIFY"
        assert waiter.revision() == revision + 1
        # a change made while nobody waited returns the next wait at once
        writer.add_person("Bob")
        started = time.monotonic()
        waiter.wait_for_change(revision + 1, timeout=60)
        assert time.monotonic() - started < 30


def test_a_connection_lost_mid_enrollment_writes_nothing_and_the_next_call_reconnects(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with EnrollmentStore(postgres_url) as store:
        ada = store.add_person("Ada")
        store.add_sample(ada.id, _crop(1), LANDMARKS, QUALITY, "photo")
        revision = store.revision()
        put_crop = store.db.put_crop

        def cut_off(session: object, person_id: str, sample_id: str, png: bytes) -> None:
            put_crop(session, person_id, sample_id, png)  # the crop is written ...
            _one(postgres_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE application_name LIKE 'facestream%%' AND datname = current_database()")

        monkeypatch.setattr(store.db, "put_crop", cut_off)
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            store.add_sample(ada.id, _crop(2), LANDMARKS, QUALITY, "photo")
        monkeypatch.undo()

        # ... and nothing of that sample is in the database; the store goes on working
        assert _one(postgres_url, "SELECT count(*) FROM crops") == 1
        assert _one(postgres_url, "SELECT count(*) FROM samples") == 1
        assert store.revision() == revision
        store.add_sample(ada.id, _crop(2), LANDMARKS, QUALITY, "photo")
        assert store.find_person("Ada").sample_count == 2


def test_two_trainers_on_one_store_one_publishes_the_other_waits(postgres_url: str) -> None:
    with StoreTrainerLock(postgres_url) as first, StoreTrainerLock(postgres_url) as second:
        first.acquire(wait=False)
        with pytest.raises(TrainerBusyError, match="facestream pid"):
            second.acquire(wait=False)
        waiting = threading.Thread(target=second.acquire, kwargs={"wait": True})
        waiting.start()
        time.sleep(1.0)
        assert waiting.is_alive() and not second.held
        first.close()  # the first trainer exits
        waiting.join(timeout=10)
        assert not waiting.is_alive() and second.held

        # the holder's connection is cut (a server restart): its next acquire takes the
        # lock again at once, on a new connection (not one more retry after the
        # outage), unless another trainer has it
        cut = "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
        _one(postgres_url, cut)
        second.acquire(wait=False)
        assert second.held
        _one(postgres_url, cut)
        with StoreTrainerLock(postgres_url) as third:
            third.acquire(wait=False)
            with pytest.raises(TrainerBusyError):
                second.acquire(wait=False)
            assert not second.held


@pytest.fixture
def stopped_cluster() -> Iterator[PostgresCluster]:
    """A cluster of its own, made and stopped: PostgreSQL is down."""
    cluster = start_cluster()
    if cluster is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    cluster.stop()
    yield cluster
    cluster.remove()


async def test_the_trainer_waits_for_postgresql_then_follows_enrollments(
    shared_dir: Path, tmp_path: Path, stopped_cluster: PostgresCluster
) -> None:
    box = Installation.create(shared_dir, tmp_path)
    box.env["FACESTREAM_ENROLLMENT_DATABASE_URL"] = stopped_cluster.url()
    box.env["FACESTREAM_ENROLLMENT_CONNECT_RETRY_MAX_S"] = "1"
    trainer = box.start("trainer", "trainer")
    try:
        await until(lambda: trainer.output().count("trying again in") >= 2, 60,
                    "the trainer to report PostgreSQL down, twice", trainer)
        assert trainer.popen.poll() is None, "the trainer exited instead of waiting"
        assert "unreachable" in trainer.output()

        stopped_cluster.start()
        await until(lambda: "trainer watching" in trainer.output(), 60,
                    "the trainer to connect", trainer)
        # another process enrolls people; the trainer hears of it (NOTIFY) and publishes
        box.run("enroll", "import", str(shared_dir / "people"), timeout=300)
        folders = [p for p in (shared_dir / "people").iterdir() if p.is_dir()]

        def published_everyone() -> bool:  # `enroll import` names lin_manuel_miranda/ so
            manifest = box.current_manifest()
            return manifest is not None and len(manifest.labels) == len(folders) and (
                "Lin Manuel Miranda" in manifest.labels)

        await until(published_everyone, 240,
                    "the trainer to publish a bundle of everyone enrolled", trainer)
        assert trainer.popen.poll() is None
    finally:
        trainer.stop()


def test_a_connection_the_server_ended_is_dropped_and_the_next_call_connects(
    postgres_url: str,
) -> None:
    """As when PostgreSQL restarts: the server ends the store's connections ("terminating
    connection due to administrator command"). One call fails as unreachable; the next
    connects again, not through the dead connection."""
    with EnrollmentStore(postgres_url) as store:
        revision = store.revision()
        store.wait_for_change(revision, 0.01)  # the listening connection too
        _one(postgres_url, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
             "WHERE pid <> pg_backend_pid() AND datname = current_database()")
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            store.revision()
        assert store.revision() == revision
        store.wait_for_change(revision, 0.01)
