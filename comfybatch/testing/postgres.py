"""A throwaway local PostgreSQL cluster (the distribution's server binaries), for Prefect's production database.

`postgres` runs as our child (not daemonized by `pg_ctl`), so it is stopped by its pid and dies with us. It
refuses to run as root: under root (CI) its temp folder belongs to Debian's `postgres` account and it runs as that.
"""

import ctypes
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from comfybatch.deployments.platform import log_tail
from comfybatch.local.fleet import free_port

INSTALL_HINT = "apt-get install postgresql"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
_SERVER_ACCOUNT = "postgres"
_PR_SET_PDEATHSIG = 1
# Throwaway data: durability off makes Prefect's migrations and writes several times faster.
_SERVER_OPTIONS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "unix_socket_directories=")


class PostgresError(RuntimeError):
    """The local cluster could not be set up or started; the message says why."""


@dataclass(frozen=True)
class PostgresBinaries:
    """One installed PostgreSQL server: `initdb`, `postgres`, `pg_isready` and `psql` in `bin_dir`."""

    bin_dir: Path
    version: str

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)


def find_postgres() -> PostgresBinaries | None:
    """The newest Debian `/usr/lib/postgresql/<version>/bin`, else an `initdb` on PATH; None when absent."""
    needed = ("initdb", "postgres", "pg_isready", "psql")
    versions = sorted(
        (path for path in DEBIAN_ROOT.glob("*/bin") if re.fullmatch(r"\d+", path.parent.name)),
        key=lambda path: int(path.parent.name),
        reverse=True,
    )
    for bin_dir in versions:
        if all(os.access(bin_dir / name, os.X_OK) for name in needed):
            return PostgresBinaries(bin_dir, bin_dir.parent.name)
    if (initdb := shutil.which("initdb")) is not None:
        bin_dir = Path(initdb).resolve().parent
        if all(os.access(bin_dir / name, os.X_OK) for name in needed):
            return PostgresBinaries(bin_dir, _major_version(bin_dir))
    return None


@dataclass
class LocalPostgres:
    """One `postgres` process on 127.0.0.1 with a database for Prefect (`pg_trgm` created).

    Start and stop it from the same thread: it dies with the thread that started it (PR_SET_PDEATHSIG).

    Example:
        with LocalPostgres(Path(tempfile.mkdtemp())) as pg:
            env = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": pg.url}
    """

    root: Path
    port: int = field(default_factory=free_port)
    user: str = "comfybatch"
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    database: str = "prefect"
    binaries: PostgresBinaries | None = None
    die_with_parent: bool = True
    process: subprocess.Popen[bytes] | None = None
    cluster_dir: Path | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL for `PREFECT_SERVER_DATABASE_CONNECTION_URL`."""
        return f"postgresql+asyncpg://{self._credentials}@127.0.0.1:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """libpq URL (psql, asyncpg)."""
        return f"postgresql://{self._credentials}@127.0.0.1:{self.port}/{self.database}"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def _credentials(self) -> str:
        return f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"

    def start(self, *, timeout_s: float = 30.0) -> str:
        """Create the cluster, start the server, create the database with `pg_trgm`; return `url`.

        Raises:
            PostgresError with the server's log tail, or an install hint when the binaries are missing.
        """
        binaries = self.binaries or find_postgres()
        if binaries is None:
            raise PostgresError(f"PostgreSQL server binaries not found under {DEBIAN_ROOT}/<version>/bin or on "
                                f"PATH; install them: {INSTALL_HINT}")  # fmt: skip
        self.binaries = binaries
        self.root.mkdir(parents=True, exist_ok=True)
        account = _server_account()
        try:
            self._init_cluster(binaries, account)
            self._spawn(binaries, account)
            self._wait_ready(binaries, timeout_s)
            self._psql(f'CREATE DATABASE "{self.database}"', database="postgres")
            self._psql("CREATE EXTENSION IF NOT EXISTS pg_trgm", database=self.database)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self, *, timeout_s: float = 15.0) -> None:
        """Fast shutdown (SIGINT) of our own pid, SIGKILL after `timeout_s`; then delete the cluster."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.cluster_dir is not None:
            shutil.rmtree(self.cluster_dir, ignore_errors=True)
            self.cluster_dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _init_cluster(self, binaries: PostgresBinaries, account: pwd.struct_passwd | None) -> None:
        # A fresh folder outside `root`: pytest's temp folders are 0700 root, closed to the server account.
        self.cluster_dir = Path(tempfile.mkdtemp(prefix="comfybatch-pg-"))
        password_file = self.cluster_dir / "password"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        if account is not None:
            for path in (self.cluster_dir, password_file):
                os.chown(path, account.pw_uid, account.pw_gid)
        command = [binaries.tool("initdb"), "--pgdata", str(self.cluster_dir / "data"), "--username", self.user,
                   f"--pwfile={password_file}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
                   "--no-sync"]  # fmt: skip
        run_as = _RunAs.of(account)
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=120, env=self._server_env(), cwd=self.cluster_dir,
            user=run_as.uid, group=run_as.gid, extra_groups=run_as.groups,
        )  # fmt: skip
        password_file.unlink()
        if done.returncode != 0:
            raise PostgresError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _spawn(self, binaries: PostgresBinaries, account: pwd.struct_passwd | None) -> None:
        assert self.cluster_dir is not None
        command = [binaries.tool("postgres"), "-D", str(self.cluster_dir / "data"), "-h", "127.0.0.1",
                   "-p", str(self.port)]  # fmt: skip
        for option in _SERVER_OPTIONS:
            command += ["-c", option]
        run_as = _RunAs.of(account)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self._server_env(), cwd=self.cluster_dir,
                user=run_as.uid, group=run_as.gid, extra_groups=run_as.groups,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                start_new_session=not self.die_with_parent,
            )  # fmt: skip

    def _wait_ready(self, binaries: PostgresBinaries, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        probe = [binaries.tool("pg_isready"), "--quiet", "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PostgresError(f"postgres exited during start-up\n{log_tail(self.log_path)}")
            if subprocess.run(probe, env=_client_env(self.password), check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.1)
        raise PostgresError(f"postgres not ready after {timeout_s:g} s\n{log_tail(self.log_path)}")

    def _psql(self, sql: str, *, database: str) -> None:
        assert self.binaries is not None
        command = [self.binaries.tool("psql"), "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                   "-p", str(self.port), "-U", self.user, "-d", database, "-c", sql]  # fmt: skip
        done = subprocess.run(command, env=_client_env(self.password), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise PostgresError(f"{sql!r} failed: {done.stderr.strip()}")

    def _server_env(self) -> dict[str, str]:
        return {**_clean_env(), "HOME": str(self.cluster_dir), "LC_ALL": "C"}


@dataclass(frozen=True)
class _RunAs:
    """Popen's `user`, `group` and `extra_groups`: all None to run as ourselves."""

    uid: int | None = None
    gid: int | None = None
    groups: list[int] | None = None

    @classmethod
    def of(cls, account: pwd.struct_passwd | None) -> Self:
        if account is None:
            return cls()
        return cls(account.pw_uid, account.pw_gid, [])


def _server_account() -> pwd.struct_passwd | None:
    """None when we may run the server ourselves; under root, the unprivileged `postgres` account."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_SERVER_ACCOUNT)
    except KeyError:
        raise PostgresError(f"PostgreSQL refuses to run as root and there is no '{_SERVER_ACCOUNT}' account; "
                            f"{INSTALL_HINT} creates it") from None  # fmt: skip


def _clean_env() -> dict[str, str]:
    # PGDATA, PGPORT, PGUSER… from the caller's shell must not redirect our binaries to another cluster.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _client_env(password: str) -> dict[str, str]:
    return {**_clean_env(), "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"}


def _major_version(bin_dir: Path) -> str:
    done = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=10)
    found = re.search(r"(\d+)(?:\.\d+)*", done.stdout)
    return found.group(1) if found else "unknown"


def _die_with_parent() -> None:
    # Runs in the child, after the switch to the server account. SIGINT is PostgreSQL's fast shutdown;
    # SIGTERM ("smart") would wait for the clients of a test run that is already gone.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
