"""A real PostgreSQL server for the tests: a temporary cluster on loopback.

Debian's ``postgresql`` package (installed by ``make test``) has its programs in
``/usr/lib/postgresql/<version>/bin``. PostgreSQL refuses to run as root, so when the
tests run as root the cluster belongs to the ``postgres`` user the package creates
and its programs run as that user (``runuser``); otherwise it belongs to whoever runs
the tests. The cluster trusts local connections (it listens on 127.0.0.1 only, on a
free port, and lives in a temporary folder removed afterwards).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from e2e_support import free_port

__all__ = ["PostgresCluster", "find_pg_bin", "start_cluster"]

_DEBIAN_BIN = Path("/usr/lib/postgresql")


def find_pg_bin() -> Path | None:
    """The folder with ``initdb`` and ``pg_ctl``: Debian's newest, else PATH's."""
    versions = sorted(
        (p for p in _DEBIAN_BIN.glob("*/bin") if (p / "pg_ctl").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


@dataclass
class PostgresCluster:
    bin_dir: Path
    data_dir: Path
    port: int
    user: str | None  # the user its programs run as; None: this process's user
    folder: Path  # removed by stop()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    @property
    def superuser(self) -> str:
        return self.user or pwd.getpwuid(os.getuid()).pw_name

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = self._run(
            ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", self.superuser, "-d", database, "-c", sql]
        )
        return out.stdout

    def start(self) -> None:
        self._run(["pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60",
                   "-l", str(self.data_dir / "server.log"), "start"])

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate); the data stays."""
        self._run(["pg_ctl", "-D", str(self.data_dir), "-w", "-m", mode, "stop"], check=False)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.data_dir / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / argv[0]) if (self.bin_dir / argv[0]).exists()
                   else argv[0], *argv[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({result.returncode}): {result.stderr.strip()}\n"
                f"{self.log_tail()}"
            )
        return result


def start_cluster() -> PostgresCluster | None:
    """A started temporary cluster, or None when PostgreSQL is not installed."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        return None
    user = "postgres" if os.getuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="facestream-pg-"))
    data_dir = folder / "data"
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    folder.chmod(0o700)
    cluster = PostgresCluster(bin_dir, data_dir, free_port(), user, folder)
    try:
        cluster._run(["initdb", "-D", str(data_dir), "-A", "trust", "-E", "UTF8",
                      "--locale=C.UTF-8", "-U", cluster.superuser])
        with (data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {cluster.port}\n"
                f"unix_socket_directories = '{folder}'\nfsync = on\n"
                "max_connections = 100\n"
            )
        cluster.start()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return cluster
