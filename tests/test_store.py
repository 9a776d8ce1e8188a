"""The enrollment store on a real SQLite file and on a real PostgreSQL server: people,
samples, the embedding cache, erasure and two processes at once on both; file modes and
crash safety (a real process killed between a sample's file write and its commit) on
SQLite, migrations on PostgreSQL."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from enrollment.errors import (
    AmbiguousPersonError,
    DuplicatePersonError,
    DuplicateSampleError,
    InvalidNameError,
    StoreError,
    UnknownPersonError,
    UnknownSampleError,
)
from enrollment.files import TEMP_PREFIX
from enrollment.postgres import PostgresDatabase
from enrollment.sqlite import DATABASE, SqliteDatabase
from enrollment.store import EnrollmentStore, Quality, Sample, crop_sha256
from facecore.config import EnrollmentSettings, Settings, load_settings
from facecore.errors import ConfigError
from facestream.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent
LANDMARKS = np.array([[20, 24], [44, 24], [32, 36], [22, 48], [42, 48]], np.float32)
QUALITY = Quality(face_px=120.0, sharpness=300.0, frontalness=0.9, score=0.8)


def _crop(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 60, 3), np.uint8)


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a new store lives: a SQLite folder, or a new PostgreSQL database."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return str(tmp_path / "enrollment")


@pytest.fixture
def store(location: str) -> Iterator[EnrollmentStore]:
    with EnrollmentStore(location) as opened:
        yield opened


def _sql(store: EnrollmentStore, sql: str, params: tuple[object, ...] = ()) -> list[tuple]:
    """A statement on the PostgreSQL store's own database, as the test's superuser."""
    assert isinstance(store.db, PostgresDatabase)
    with psycopg.connect(store.db.url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def _crops_held(store: EnrollmentStore) -> int:
    """How many crops the store keeps: files (SQLite) or rows (PostgreSQL)."""
    if isinstance(store.db, SqliteDatabase):
        return sum(1 for p in (store.db.root / "samples").rglob("*") if p.is_file())
    return _sql(store, "SELECT count(*) FROM crops")[0][0]


def test_a_store_keeps_one_identity_that_no_other_store_has(
    location: str, tmp_path: Path
) -> None:
    """Every connection to a store, in any process, reads one identity (made on first
    use, also for a store from before it existed), and another store has its own: what
    a bundle records to tell its store's ids and revisions from another's."""
    with EnrollmentStore(location) as first, EnrollmentStore(location) as second:
        revision = first.revision()
        identity = first.identity()
        assert second.identity() == identity and first.identity() == identity
        assert first.revision() == revision  # not a change to people or samples
    with EnrollmentStore(location) as again:
        assert again.identity() == identity
    with EnrollmentStore(tmp_path / "another") as other:
        assert other.identity() != identity


def test_people_names_any_script_unique_without_case(store: EnrollmentStore) -> None:
    start = store.revision()
    ada = store.add_person("  Ada   Lovelace ")
    bruce = store.add_person("李小龙")
    assert ada.name == "Ada Lovelace" and ada.sample_count == 0
    assert store.revision() == start + 2
    assert store.find_person("ada lovelace") == ada
    assert store.find_person(ada.id) == ada
    assert store.find_person("李小龙") == bruce
    # the same name in decomposed Unicode (NFD) is the same name
    jose = store.add_person("Jos\u00e9")
    assert store.find_person("Jose\u0301") == jose
    with pytest.raises(DuplicatePersonError):
        store.add_person("ADA LOVELACE")
    with pytest.raises(InvalidNameError):
        store.add_person("   ")
    with pytest.raises(InvalidNameError):
        store.add_person("Ada\x00")
    with pytest.raises(UnknownPersonError):
        store.find_person("Grace Hopper")
    assert [p.name for p in store.list_people()] == ["Ada Lovelace", "José", "李小龙"]

    renamed = store.rename_person(ada.id, "Augusta Ada King")
    assert renamed.id == ada.id and renamed.name == "Augusta Ada King"
    assert renamed.updated >= ada.updated
    with pytest.raises(DuplicatePersonError):
        store.rename_person(ada.id, "李小龙")
    store.rename_person(ada.id, "augusta ada king")  # a change of case is allowed
    with pytest.raises(UnknownPersonError):
        store.rename_person("0123456789abcdef", "Nobody")

    assert store.get_or_add_person("José") == (jose, False)
    grace, created = store.get_or_add_person("Grace Hopper")
    assert created and store.find_person("grace hopper") == grace


# bidi controls and invisible format characters (Unicode category Cf)
DISGUISING = [
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # embeddings and overrides
    "\u2066", "\u2067", "\u2068", "\u2069",  # isolates
    "\u200e", "\u200f", "\u061c",  # direction marks
    "\u200b", "\ufeff", "\u2060", "\u00ad",  # zero width space, BOM, word joiner, soft hyphen
]


def test_names_that_disguise_themselves_are_refused(store: EnrollmentStore) -> None:
    ana = store.add_person("Ana Lopez")
    for char in DISGUISING:
        for name in (f"Ana{char} Lopez", f"{char}Ana Lopez", f"Ana Lopez{char}"):
            with pytest.raises(InvalidNameError, match=f"U\\+{ord(char):04X}") as refused:
                store.add_person(name)
            assert "invisible or text-direction" in str(refused.value)
            with pytest.raises(InvalidNameError):
                store.rename_person(ana.id, name)
    # the joiners that scripts need stay: Persian (ZWNJ) and an emoji sequence (ZWJ)
    persian = store.add_person("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647")
    family = store.add_person("Ana \U0001f468\u200d\U0001f469")
    assert "\u200c" in persian.name and "\u200d" in family.name
    # stored in NFC whatever form it came in, and Chinese and markup characters pass
    assert store.add_person("Zoe\u0308 Salda\u0301na").name == "Zo\u00eb Sald\u00e1na"
    assert store.add_person("王小明").name == "王小明"
    assert store.add_person("<b>Tom</b> & Jerry").name == "<b>Tom</b> & Jerry"
    assert [p.name for p in store.list_people() if p.id == ana.id] == ["Ana Lopez"]


def test_names_shaped_like_an_id_are_refused(store: EnrollmentStore) -> None:
    ada = store.add_person("Ada")
    for name in (ada.id, ada.id.upper(), f" {ada.id} ", "feedface0badf00d"):
        with pytest.raises(InvalidNameError, match="shape of a person id"):
            store.add_person(name)
        with pytest.raises(InvalidNameError, match="shape of a person id"):
            store.get_or_add_person(name)
        with pytest.raises(InvalidNameError, match="shape of a person id"):
            store.rename_person(ada.id, name)
    # one digit more or less, or other words around it, is a name like any other
    for name in ("feedface0badf00", "feedface0badf00d1", "Agent feedface0badf00d"):
        assert store.add_person(name).name == name
    assert store.find_person(ada.id).name == "Ada"


def test_a_reference_that_is_one_persons_id_and_anothers_name_is_ambiguous(
    store: EnrollmentStore,
) -> None:
    ada = store.add_person("Ada")
    store.add_sample(ada.id, _crop(1), LANDMARKS, QUALITY, "photo")
    # a person named like Ada's id, as in a store written before such names were refused
    legacy = "0123456789abcdef"
    with store.db.change() as conn:
        conn.execute(
            "INSERT INTO people (id, name, name_key, created, updated) VALUES (?, ?, ?, ?, ?)",
            (legacy, ada.id, ada.id, ada.created, ada.created),
        )
    store.add_sample(legacy, _crop(2), LANDMARKS, QUALITY, "photo")
    with pytest.raises(AmbiguousPersonError) as refused:
        store.find_person(ada.id)
    assert (refused.value.by_id, refused.value.by_name) == (ada.id, legacy)
    assert f"it is the id of 'Ada' and the name of the person with the id {legacy}" in str(
        refused.value
    )
    # the unambiguous references still work; ids the program holds are never names
    assert store.find_person("ada").id == ada.id and store.find_person(legacy).name == ada.id
    assert store.get_person(ada.id).name == "Ada"
    assert store.rename_person(ada.id, "Ada Lovelace").id == ada.id
    assert {p.id: p.sample_count for p in store.list_people()} == {ada.id: 1, legacy: 1}


def test_a_database_url_that_is_not_postgresql_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a folder store named like the URL would go
    for url, given in (("notaurl", "not a URL"), ("ada:secret@db/faces", "not a URL"),
                       ("mysql://ada:secret@db/faces", "a 'mysql' URL")):
        with pytest.raises(ConfigError, match="must be a PostgreSQL URL") as refused:
            load_settings({"state_dir": str(tmp_path / "state"), "enrollment.database_url": url},
                          {})
        assert str(refused.value).endswith(f"the value given is {given}")
        assert "secret" not in str(refused.value)
        by_hand = Settings(tmp_path / "state", tmp_path / "cache",
                           enrollment=EnrollmentSettings(database_url=url))
        with pytest.raises(StoreError, match="must be a PostgreSQL URL") as refused:
            EnrollmentStore.from_settings(by_hand)
        assert "secret" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StoreError, match="no store given"):
        EnrollmentStore("")


def test_samples_round_trip_and_duplicates(store: EnrollmentStore) -> None:
    ada = store.add_person("Ada")
    bob = store.add_person("Bob")
    crop = _crop(1)
    sample = store.add_sample(ada.id, crop, LANDMARKS, QUALITY, "photo")
    assert sample.sha256 == crop_sha256(crop)
    assert (sample.path is not None) == isinstance(store.db, SqliteDatabase)
    assert store.samples() == [sample]
    assert store.samples(ada.id) == [sample] and store.samples(bob.id) == []
    [read] = store.samples(ada.id)
    np.testing.assert_array_equal(read.landmarks, LANDMARKS)
    assert read.quality == QUALITY and read.source == "photo"
    np.testing.assert_array_equal(store.load_crop(read), crop)
    assert store.find_person(ada.id).sample_count == 1

    revision = store.revision()
    with pytest.raises(DuplicateSampleError) as duplicate:
        store.add_sample(bob.id, crop.copy(), LANDMARKS, QUALITY, "live")
    assert duplicate.value.sample_id == sample.id and duplicate.value.person_name == "Ada"
    with pytest.raises(UnknownPersonError):
        store.add_sample("0123456789abcdef", _crop(2), LANDMARKS, QUALITY, "photo")
    with pytest.raises(ValueError, match="source"):
        store.add_sample(ada.id, _crop(3), LANDMARKS, QUALITY, "scanner")
    assert store.revision() == revision  # refused changes change nothing
    assert _crops_held(store) == 1

    store.remove_sample(sample.id)
    assert _crops_held(store) == 0 and store.samples() == []
    assert store.revision() == revision + 1
    with pytest.raises(UnknownSampleError):
        store.remove_sample(sample.id)
    with pytest.raises(UnknownPersonError):
        store.samples("0123456789abcdef")


def test_damaged_sample_is_reported(store: EnrollmentStore) -> None:
    sample = store.add_sample(store.add_person("Ada").id, _crop(1), LANDMARKS, QUALITY, "photo")
    if sample.path is not None:
        sample.path.write_bytes(sample.path.read_bytes()[:100])
    else:
        _sql(store, "UPDATE crops SET png = substring(png from 1 for 100)")
    with pytest.raises(StoreError, match="damaged"):
        store.load_crop(sample)


def test_embedding_cache(store: EnrollmentStore) -> None:
    ada = store.add_person("Ada")
    first = store.add_sample(ada.id, _crop(1), LANDMARKS, QUALITY, "photo")
    second = store.add_sample(ada.id, _crop(2), LANDMARKS, QUALITY, "photo")
    vector = np.linspace(-1, 1, 128, dtype=np.float32)
    revision = store.revision()
    store.cache_embeddings("backbone-a", {first.sha256: vector, "f" * 64: vector})
    assert store.revision() == revision  # caching is not a change the trainer re-fits for
    cached = store.cached_embeddings("backbone-a", [first, second])
    assert list(cached) == [first.sha256]
    np.testing.assert_array_equal(cached[first.sha256], vector)
    assert cached[first.sha256].dtype == np.float32
    assert store.cached_embeddings("backbone-b", [first, second]) == {}
    store.remove_sample(first.id)
    assert store.cached_embeddings("backbone-a", [first]) == {}
    with pytest.raises(ValueError):
        store.cache_embeddings("backbone-a", {second.sha256: np.zeros((2, 2), np.float32)})


def test_remove_person_erases_files_rows_and_embeddings(store: EnrollmentStore) -> None:
    ada = store.add_person("Ada")
    bob = store.add_person("Bob")
    samples = [store.add_sample(ada.id, _crop(i), LANDMARKS, QUALITY, "photo") for i in range(3)]
    kept = store.add_sample(bob.id, _crop(9), LANDMARKS, QUALITY, "photo")
    png, kept_png = (_png(store, s) for s in (samples[0], kept))
    # a vector whose bytes are easy to find on disk
    marker = np.full(128, 1234.5678, np.float32)
    store.cache_embeddings("backbone", {s.sha256: marker for s in samples})
    store.cache_embeddings("backbone", {kept.sha256: np.ones(128, np.float32)})
    revision = store.revision()

    store.remove_person(ada.id)

    assert store.revision() == revision + 1
    with pytest.raises(UnknownPersonError):
        store.find_person("Ada")
    assert store.samples() == [kept] and _crops_held(store) == 1
    assert store.cached_embeddings("backbone", samples) == {}
    assert list(store.cached_embeddings("backbone", [kept])) == [kept.sha256]
    # no copy left on disk: in SQLite's database and log; in PostgreSQL's pages, dead
    # rows included (pageinspect reads the raw pages of every table and its TOAST)
    on_disk = _raw_bytes(store)
    assert marker.tobytes()[:64] not in on_disk
    assert png[100:164] not in on_disk and kept_png[100:164] in on_disk
    with pytest.raises(UnknownPersonError):
        store.remove_person(ada.id)


def _raw_bytes(store: EnrollmentStore) -> bytes:
    """Every byte of the store's tables as stored: SQLite's files, or every page of
    PostgreSQL's tables and their TOAST tables."""
    if isinstance(store.db, SqliteDatabase):
        files = [*store.db.root.glob(f"{DATABASE}*"), *(store.db.root / "samples").rglob("*")]
        return b"".join(p.read_bytes() for p in files if p.is_file())
    _sql(store, "CREATE EXTENSION IF NOT EXISTS pageinspect")
    relations = _sql(
        store,
        "SELECT c.oid::regclass::text, t.oid::regclass::text FROM pg_class c "
        "LEFT JOIN pg_class t ON t.oid = c.reltoastrelid "
        "WHERE c.relname IN ('people', 'samples', 'crops', 'embeddings')",
    )
    pages = []
    for relation in [name for pair in relations for name in pair if name]:
        [(count,)] = _sql(store, "SELECT pg_relation_size(%s) / 8192", (relation,))
        for block in range(count):
            pages.append(_sql(store, "SELECT get_raw_page(%s, %s)", (relation, block))[0][0])
    return b"".join(bytes(page) for page in pages)


def _png(store: EnrollmentStore, sample: Sample) -> bytes:
    return store.db.read_crop(sample.person_id, sample.id)


def test_everything_is_owner_only(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # without explicit modes, files would come out world-readable
    try:
        with EnrollmentStore(tmp_path / "enrollment") as store:
            sample = store.add_sample(
                store.add_person("Ada").id, _crop(1), LANDMARKS, QUALITY, "photo"
            )
            database_files = sorted(store.db.root.glob(f"{DATABASE}*"))
            modes = {p: stat.S_IMODE(p.stat().st_mode) for p in database_files}
    finally:
        os.umask(old_umask)
    assert [p.name for p in database_files] == [DATABASE, f"{DATABASE}-shm", f"{DATABASE}-wal"]
    assert set(modes.values()) == {0o600}
    assert stat.S_IMODE(sample.path.stat().st_mode) == 0o600
    for folder in (store.db.root, store.db.root / "samples", sample.path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_closed_twice_and_unusable_after(tmp_path: Path) -> None:
    store = EnrollmentStore(tmp_path / "enrollment")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_people()


def test_not_a_database(tmp_path: Path) -> None:
    root = tmp_path / "enrollment"
    root.mkdir()
    (root / DATABASE).write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        EnrollmentStore(root)


@pytest.mark.parametrize("loss", ["deleted", "emptied"])
def test_a_lost_database_beside_stored_crops_is_refused_not_wiped(
    loss: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "state" / "enrollment"
    with EnrollmentStore(root) as store:
        for seed, name in enumerate(("Ada", "Bob")):
            store.add_sample(store.add_person(name).id, _crop(seed), LANDMARKS, QUALITY, "photo")
    crops = sorted((root / "samples").rglob("*.png"))
    assert len(crops) == 2
    if loss == "deleted":
        (root / DATABASE).unlink()
    else:
        (root / DATABASE).write_bytes(b"")
    for stale in root.glob(DATABASE + "-*"):  # the WAL files go with their database
        stale.unlink()
    with pytest.raises(StoreError, match="holds the face crops of 2 people"):
        EnrollmentStore(root)
    # what a user sees, from any command, and then again: the crops are all kept
    for _ in range(2):
        assert main(["--state-dir", str(tmp_path / "state"), "enroll", "list"]) == 2
        assert capsys.readouterr().err == (
            f"facestream: error: the enrollment database {root / DATABASE} is missing or "
            f"empty, but {root / 'samples'} holds the face crops of 2 people: restore the "
            "database from a backup, or move samples/ away to start a new store; nothing "
            "was changed\n"
        )
    assert sorted((root / "samples").rglob("*.png")) == crops
    # with the crops moved away, a new store starts
    (root / "samples").rename(tmp_path / "moved-away")
    with EnrollmentStore(root) as store:
        assert store.list_people() == []
        ada = store.add_person("Ada")
        store.add_sample(ada.id, _crop(7), LANDMARKS, QUALITY, "photo")
    # the last person's erasure cut short after its commit: the next open finishes it
    with sqlite3.connect(root / DATABASE) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM people")
    assert (root / "samples" / ada.id).is_dir()
    with EnrollmentStore(root) as store:
        assert store.list_people() == []
    assert not (root / "samples" / ada.id).exists()


# --- other processes ----------------------------------------------------------------

_CRASH_SCRIPT = """
import os, sys, time
import numpy as np
from enrollment.store import EnrollmentStore, Quality

landmarks = np.array([[20, 24], [44, 24], [32, 36], [22, 48], [42, 48]], np.float32)
quality = Quality(120.0, 300.0, 0.9, 0.8)
crop = lambda seed: np.random.default_rng(seed).integers(0, 256, (64, 60, 3), np.uint8)
store = EnrollmentStore(sys.argv[1])
person = store.add_person("Ada")
store.add_sample(person.id, crop(1), landmarks, quality, "photo")
real = getattr(os, sys.argv[2])

def stall(*args):
    real(*args)
    print("stalled", flush=True)
    time.sleep(60)

setattr(os, sys.argv[2], stall)  # the first call is the one for the new sample's file
store.add_sample(person.id, crop(2), landmarks, quality, "photo")
"""


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    "stall_after",
    [
        "fsync",  # the temporary file is written and flushed, not yet renamed
        "replace",  # the file has its final name, its row is not committed
    ],
)
def test_crash_between_file_write_and_commit(tmp_path: Path, stall_after: str) -> None:
    root = tmp_path / "enrollment"
    with _python(_CRASH_SCRIPT, str(root), stall_after) as writer:
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == "stalled\n"
            on_disk = sorted(p.name for p in (root / "samples").rglob("*") if p.is_file())
            assert len(on_disk) == 2  # the committed sample and the one being written
            has_temp = any(name.startswith(TEMP_PREFIX) for name in on_disk)
            assert has_temp == (stall_after == "fsync")
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL

    with EnrollmentStore(root) as reopened:
        [sample] = reopened.samples()
        np.testing.assert_array_equal(reopened.load_crop(sample), _crop(1))
        files = [p for p in (root / "samples").rglob("*") if p.is_file()]
        assert files == [sample.path]  # the half sample is gone, the committed one stays
        assert reopened.find_person("Ada").sample_count == 1
        # the store goes on working: the interrupted sample can be added now
        reopened.add_sample(sample.person_id, _crop(2), LANDMARKS, QUALITY, "photo")


_WRITER_SCRIPT = """
import sys
import numpy as np
from enrollment.store import EnrollmentStore, Quality

landmarks = np.array([[20, 24], [44, 24], [32, 36], [22, 48], [42, 48]], np.float32)
with EnrollmentStore(sys.argv[1]) as store:
    person = store.add_person("Writer")
    print("ready", flush=True)
    sys.stdin.readline()
    for seed in range(1000, 1000 + int(sys.argv[2])):
        crop = np.random.default_rng(seed).integers(0, 256, (64, 60, 3), np.uint8)
        store.add_sample(person.id, crop, landmarks, Quality(120.0, 300.0, 0.9, 0.8), "live")
"""


def test_two_processes_write_while_reading(location: str) -> None:
    count = 40
    with EnrollmentStore(location) as store:
        ada = store.add_person("Ada")
        with _python(_WRITER_SCRIPT, location, str(count)) as writer:
            assert writer.stdin is not None and writer.stdout is not None
            assert writer.stdout.readline() == "ready\n"
            writer.stdin.write("go\n")
            writer.stdin.flush()
            seen_counts, revisions, verified, mine = set(), [], set(), 0
            while writer.poll() is None or mine < 10:
                if mine < 10:  # this process writes too, at the same time
                    store.add_sample(ada.id, _crop(mine), LANDMARKS, QUALITY, "photo")
                    mine += 1
                revisions.append(store.revision())
                theirs = [s for s in store.samples() if s.source == "live"]
                seen_counts.add(len(theirs))
                for sample in theirs:
                    if sample.id not in verified:  # every visible sample is complete
                        assert store.load_crop(sample).shape == (64, 60, 3)
                        verified.add(sample.id)
        assert writer.returncode == 0
        assert revisions == sorted(revisions)
        assert len(seen_counts) >= 2, "the reader never saw the writer in the middle of its work"
        assert len(store.samples(store.find_person("Writer").id)) == count
        assert len(store.samples(ada.id)) == 10
        # one change per person and per sample, from both processes
        assert store.revision() == 2 + count + 10
