"""A throwaway PostgreSQL cluster on 127.0.0.1: the database of the cluster-like MLflow profile."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.servers.process import ensure_debian_package, free_port, start_and_wait, unavailable


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temporary folder, on 127.0.0.1 and a free port.

    PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres``
    system user (created with ``useradd`` if the Debian package did not). Authentication is
    ``trust`` for 127.0.0.1: it is a test database that lives as long as the test session.
    """

    def __init__(self, base: Path, database: str = "mlflow", user: str = "ctpipe") -> None:
        """Initialise a cluster, start it and create ``database``.

        Args:
            base: Folder for its log (the data folder is a fresh one under the system temp dir).
            database: Database to create.
            user: PostgreSQL superuser name.
        """
        import tempfile

        search = ["/usr/lib/postgresql/*/bin"]
        initdb = ensure_debian_package("initdb", "postgresql", search_dirs=search)
        postgres = str(Path(initdb).with_name("postgres"))
        self.os_user = _postgres_os_user()
        # Under root, base (pytest's tmp, mode 0700) is unreadable for postgres: use a fresh temp dir.
        self.root = Path(tempfile.mkdtemp(prefix="ctpipe-pg-"))
        data, sockets = self.root / "data", self.root / "sockets"
        for folder in (data, sockets):
            folder.mkdir()
            if self.os_user is not None:
                shutil.chown(folder, self.os_user, self.os_user)
        if self.os_user is not None:
            shutil.chown(self.root, self.os_user, self.os_user)
        init = subprocess.run(
            [initdb, "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
            capture_output=True,
            text=True,
            user=self.os_user,
        )
        if init.returncode != 0:
            unavailable(f"initdb failed (exit {init.returncode}): {init.stderr.strip()[-500:]}")
        self.port = free_port()
        self.user = user
        self.uri = f"postgresql://{user}@127.0.0.1:{self.port}/{database}"
        # SQLAlchemy (MLflow's store) defaults to psycopg 3 for postgresql://; name the installed driver.
        self.sqlalchemy_uri = self.uri.replace("postgresql://", "postgresql+psycopg2://", 1)
        self.process = start_and_wait(
            "postgres",
            [
                postgres,
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(sockets),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
            base / "postgres.log",
            user=self.os_user,
            port=self.port,
            # Creating the database also waits for the end of startup (the port opens before it).
            ready=lambda _: self._create_database(user, database),
        )

    def _create_database(self, user: str, database: str) -> None:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=user, dbname="postgres")
                break
            except psycopg2.OperationalError:  # the port opens before startup has finished
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{database}"')
        connection.close()

    def create_database(self, database: str) -> str:
        """Create another database in this cluster (e.g. for a second MLflow server) and return its SQLAlchemy URI."""
        self._create_database(self.user, database)
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{database}"

    def query(self, sql: str) -> list[tuple]:
        """Rows of one SQL query against the database (to check what a server wrote)."""
        import psycopg2

        with psycopg2.connect(self.uri) as connection, connection.cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall())

    def stop(self) -> None:
        """Stop the server and remove its data folder."""
        self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _postgres_os_user() -> str | None:
    """The OS user to run PostgreSQL as: None (this user) unless root, then ``postgres``."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        created = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            unavailable(f"cannot create the postgres user: {created.stderr.strip()}")
    return "postgres"
