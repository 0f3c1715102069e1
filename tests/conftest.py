"""Shared fixtures: a VM on a temporary state directory, a fake model server on loopback, and a
throwaway PostgreSQL server for the modules that run on both state stores.

A test module runs its VM tests on both stores by declaring ``BACKENDS = ("sqlite",
"postgres")``: every test in it that uses a VM (the ``backend`` fixture, directly or through
``make_vm``/``vm``) is parametrized over them. ``state_sql`` runs SQL on the test's store,
whichever it is, to look at (or tamper with) what a stopped VM left there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import avm
from avm.storage import open_store
from avm.storage.base import StateStore
from avm.testing import FakeOpenAIServer

OpenState = Callable[[], Awaitable[StateStore]]


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(latency_s=0.0) as server:
        yield server


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server of our own (Debian's package, which `make test` installs)."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed here; `make test` installs it")
    data = Path(tempfile.mkdtemp(prefix="avm-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*command: str) -> None:
        # The server outlives pg_ctl: its output goes to a log file, never to our pipes.
        subprocess.run([*as_owner, *command], check=True, stdout=subprocess.DEVNULL, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data / "db"), "--auth=trust", "-U", "avm", "--no-sync")
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    log = str(data / "server.log")
    run(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", log, "-o", options, "-w", "start")
    try:
        yield f"postgresql://avm@127.0.0.1:{port}"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh database on the session's server."""
    name = f"avm_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(f"{postgres_server}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    yield f"{postgres_server}/{name}"
    asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = getattr(metafunc.module, "BACKENDS", None)
    if backends and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    if backend == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return None


@pytest.fixture
def make_vm(tmp_path: Path, store_url: str | None) -> Callable[..., avm.VM]:
    """Build VMs on ``tmp_path/state`` (the same directory and store each call, to test
    restarts), on the store the test's ``backend`` names."""

    def make(**options: Any) -> avm.VM:
        options.setdefault("state_dir", tmp_path / "state")
        options.setdefault("store", store_url)
        return avm.VM(**options)

    return make


@pytest.fixture
async def vm(make_vm: Callable[..., avm.VM]) -> AsyncIterator[avm.VM]:
    machine = make_vm()
    async with machine:
        yield machine


@pytest.fixture
async def open_state(tmp_path: Path, store_url: str | None) -> AsyncIterator[OpenState]:
    """``await open_state()``: the state store ``make_vm`` uses, opened directly (after the VM
    stopped), to look at what it holds; closed when the test ends."""
    opened: list[StateStore] = []

    async def open_() -> StateStore:
        store = await open_store(store_url, tmp_path / "state", "durable")
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.aclose()


StateSql = Callable[..., Awaitable[list[tuple[Any, ...]]]]


@pytest.fixture
def state_sql(tmp_path: Path, store_url: str | None) -> StateSql:
    """``await state_sql(sql, *params)``: run one statement (``?`` placeholders) on the store
    that ``make_vm`` uses, outside any VM; returns the rows as tuples."""

    async def run(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if store_url is None:
            path = tmp_path / "state" / "state.db"
            with contextlib.closing(sqlite3.connect(path)) as db, db:
                return [tuple(row) for row in db.execute(sql, params).fetchall()]
        numbers = itertools.count(1)
        dialect = re.sub(r"\?", lambda _: f"${next(numbers)}", sql)
        conn = await asyncpg.connect(store_url)
        try:
            return [tuple(row) for row in await conn.fetch(dialect, *params)]
        finally:
            await conn.close()

    return run
