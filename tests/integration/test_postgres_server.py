"""The PostgreSQL fixture (tests/support/postgres_server.py) gives a real server: reachable on 127.0.0.1 with psycopg,
SQLAlchemy and Optuna's RDBStorage, run by an unprivileged user, one fresh database per test, and gone after stop()."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import psycopg
import pytest
import sqlalchemy

from tests.support.postgres_server import SYSTEM_USER, PostgresServer, _alive


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def refuses_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_server_listens_on_loopback_as_an_unprivileged_user(postgres_server):
    assert postgres_server.url == f"postgresql+psycopg://test@127.0.0.1:{postgres_server.port}/postgres"
    with psycopg.connect(postgres_server.conninfo(), connect_timeout=10) as conn:
        user, address, port = conn.execute(
            "SELECT current_user, host(inet_server_addr()), inet_server_port()").fetchone()
        listen = conn.execute("SHOW listen_addresses").fetchone()[0]
    assert (user, address, port, listen) == ("test", "127.0.0.1", postgres_server.port, "127.0.0.1")
    assert postgres_server.running
    uid = process_uid(postgres_server.pid)
    assert uid != 0, "PostgreSQL must not run as root"
    if os.geteuid() == 0:
        import pwd

        assert pwd.getpwuid(uid).pw_name == SYSTEM_USER


def test_a_fresh_database_per_test_holds_a_table(postgres_server, postgres_database):
    name = postgres_database.rsplit("/", 1)[1]
    assert name.startswith("test_a_fresh_database_per_test")
    # SQLAlchemy with the URL as given (what Optuna's RDBStorage does with it) ...
    engine = sqlalchemy.create_engine(postgres_database)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE trials (number integer PRIMARY KEY, lr double precision)"))
            conn.execute(sqlalchemy.text("INSERT INTO trials VALUES (0, 0.1), (1, 0.025)"))
    finally:
        engine.dispose()
    # ... and psycopg on its own connection read back the same rows.
    with psycopg.connect(postgres_server.conninfo(name), connect_timeout=10) as conn:
        assert conn.execute("SELECT number, lr FROM trials ORDER BY number").fetchall() == [(0, 0.1), (1, 0.025)]
    # Another database does not see them: tests do not share studies.
    other = postgres_server.create_database()
    with psycopg.connect(postgres_server.conninfo(other.rsplit("/", 1)[1]), connect_timeout=10) as conn:
        assert conn.execute("SELECT to_regclass('trials')").fetchone() == (None,)
    with pytest.raises(ValueError):
        postgres_server.create_database('x"; DROP DATABASE postgres; --')


def test_optuna_rdb_storage_works_on_it(postgres_database):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(postgres_database)
    study = optuna.create_study(study_name="fixture", storage=storage, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=2)
    storage.engine.dispose() if hasattr(storage, "engine") else None
    again = optuna.load_study(study_name="fixture", storage=postgres_database)
    assert len(again.trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in again.trials)


def test_stop_leaves_no_server_and_no_folder():
    server = PostgresServer().start()
    pid, port, root = server.pid, server.port, server.root
    try:
        with psycopg.connect(server.conninfo(), connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    finally:
        server.stop()
    assert not _alive(pid) and not server.running
    assert refuses_connections(port)
    assert not root.exists()


def test_a_server_pg_ctl_cannot_stop_is_killed_by_pid():
    server = PostgresServer().start()
    pid, port = server.pid, server.port
    try:
        # Without postmaster.pid, `pg_ctl stop` finds no server: stop() must fall back to the pid it kept.
        (server.data / "postmaster.pid").unlink()
    finally:
        server.stop()
    assert not _alive(pid)
    assert refuses_connections(port)
