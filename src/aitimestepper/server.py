"""A shared MLflow tracking server: a PostgreSQL backend store and a proxied artifact store, on loopback.

Layout of the server's directory (kept between starts, so runs and registry survive a restart)::

    DIR/postgres/data     the PostgreSQL cluster (``initdb`` on first start; superuser ``mlflow``)
    DIR/postgres/log      PostgreSQL's log
    DIR/artifacts         the artifact store the server proxies (``mlflow-artifacts:/``)
    DIR/mlflow.log        the tracking server's log

Both processes listen on 127.0.0.1 only, are children of the caller and are stopped by their PIDs
(:meth:`SharedServer.stop`). PostgreSQL refuses to run as root; when the caller is root, it runs
as the ``postgres`` user, which then owns ``DIR/postgres``. Clients need only
``MLFLOW_TRACKING_URI=http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

DATABASE, DATABASE_USER = "mlflow", "mlflow"
POSTGRES_SYSTEM_USER = "postgres"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


class ServerError(RuntimeError):
    """The shared server cannot start (or stop); the message says why and what to do."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_binaries() -> Path:
    """The directory of PostgreSQL's server programs (``initdb``, ``postgres``, ``pg_isready``).

    Raises:
        ServerError: PostgreSQL is not installed.
    """
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if installed:
        return installed[-1].parent
    raise ServerError(
        "PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql): "
        "`apt-get install postgresql` (Debian/Ubuntu) or `brew install postgresql` (macOS)"
    )


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class SharedServer:
    """A running PostgreSQL and MLflow tracking server (see the module docstring).

    Attributes:
        directory: the server's directory (absolute).
        port: the tracking server's port on 127.0.0.1.
        postgres_port: PostgreSQL's port on 127.0.0.1.
    """

    directory: Path
    port: int
    postgres_port: int
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        """The tracking (and registry) URI clients set as ``MLFLOW_TRACKING_URI``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend_store_uri(self) -> str:
        return f"postgresql+psycopg2://{DATABASE_USER}@127.0.0.1:{self.postgres_port}/{DATABASE}"

    @property
    def pids(self) -> dict[str, int]:
        """Name -> PID of the processes this object started (``postgres``, ``mlflow``)."""
        return {name: process.pid for name, process in self.processes.items()}

    def start(self) -> SharedServer:
        """Start PostgreSQL (creating the cluster and database on first use), then the tracking
        server; return once ``/health`` answers. Stops what it started if anything fails.

        Raises:
            ServerError: a busy port, PostgreSQL missing, or a process that did not come up (its
                log's tail is in the message).
        """
        for name, port in (("port", self.port), ("PostgreSQL port", self.postgres_port)):
            if not _port_free(port):
                raise ServerError(f"{name} {port} on 127.0.0.1 is in use: choose another one")
        try:
            self._start_postgres()
            self._start_mlflow()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_postgres(self) -> None:
        binaries = postgres_binaries()
        home = self.directory / "postgres"
        data = home / "data"
        as_root = os.geteuid() == 0
        home.mkdir(parents=True, exist_ok=True)
        user = {"user": POSTGRES_SYSTEM_USER, "group": POSTGRES_SYSTEM_USER, "extra_groups": []} if as_root else {}
        if as_root:
            shutil.chown(home, POSTGRES_SYSTEM_USER, POSTGRES_SYSTEM_USER)
            reachable = subprocess.run(["test", "-w", str(home)], **user, check=False).returncode == 0
            if not reachable:
                raise ServerError(
                    f"PostgreSQL runs as user {POSTGRES_SYSTEM_USER!r} (it refuses root), which cannot reach "
                    f"{home}: let it traverse the parent directories (chmod o+x) or choose another --dir"
                )
        if not (data / "PG_VERSION").is_file():
            command = [str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", DATABASE_USER, "-E", "UTF8"]
            done = subprocess.run(command, **user, capture_output=True, text=True, cwd=home, check=False)
            if done.returncode != 0:
                raise ServerError(f"initdb failed in {data}:\n{done.stdout}{done.stderr}")
        log = open(home / "log", "ab")  # noqa: SIM115 (the child writes to it for its whole life)
        self.processes["postgres"] = subprocess.Popen(
            [str(binaries / "postgres"), "-D", str(data), "-p", str(self.postgres_port), "-k", str(home)]
            + ["-c", "listen_addresses=127.0.0.1"],
            **user,
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        ready = [str(binaries / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.postgres_port)]
        self._wait("postgres", home / "log", lambda: subprocess.run(ready, check=False).returncode == 0)
        exists = subprocess.run(
            [str(binaries / "psql"), "-h", "127.0.0.1", "-p", str(self.postgres_port), "-U", DATABASE_USER]
            + ["-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if exists != "1":
            subprocess.run(
                [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(self.postgres_port)]
                + ["-U", DATABASE_USER, DATABASE],
                check=True,
            )

    def _start_mlflow(self) -> None:
        artifacts = self.directory / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        bin_dir = str(Path(sys.executable).parent)
        environment = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # the server starts uvicorn by name
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        environment.pop("MLFLOW_TRACKING_URI", None)
        log_path = self.directory / "mlflow.log"
        with open(log_path, "ab") as log:
            self.processes["mlflow"] = subprocess.Popen(
                [str(Path(bin_dir) / "mlflow"), "server", "--backend-store-uri", self.backend_store_uri]
                + ["--artifacts-destination", artifacts.resolve().as_uri(), "--serve-artifacts"]
                + ["--workers", "1", "--host", "127.0.0.1", "--port", str(self.port)],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    return answer.status == 200
            except (urllib.error.URLError, OSError):
                return False

        self._wait("mlflow", log_path, healthy)

    def _wait(self, name: str, log: Path, ready) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        process = self.processes[name]
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {process.returncode}" if process.poll() is not None else "timed out"
                tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
                raise ServerError(f"{name} did not come up ({state}); the end of {log}:\n{tail}")
            time.sleep(0.3)

    def exited(self) -> list[str]:
        """The names of the started processes that have exited (e.g. killed from outside)."""
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def stop(self) -> None:
        """Stop the tracking server, then PostgreSQL, by PID (each with its process group), and wait
        for them to exit. Safe to call twice.

        Raises:
            ServerError: a process still alive after :data:`STOP_TIMEOUT_S`.
        """
        stubborn = []
        for name in ("mlflow", "postgres"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            # SIGINT is PostgreSQL's "fast" shutdown; the tracking server stops on SIGTERM
            os.killpg(process.pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT_S)
                stubborn.append(name)
            _reap_group(process.pid)
        if stubborn:
            raise ServerError(f"{', '.join(stubborn)} ignored the stop signal and was killed")


def _reap_group(group: int) -> None:
    """Kill what is left of a process group (e.g. the tracking server's uvicorn worker)."""
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(group, signal.SIGKILL)


@contextmanager
def running_server(directory: Path, port: int, postgres_port: int) -> Iterator[SharedServer]:
    """Start a :class:`SharedServer` in ``directory``; stop it by PID on exit."""
    server = SharedServer(Path(directory).resolve(), port, postgres_port).start()
    try:
        yield server
    finally:
        server.stop()
