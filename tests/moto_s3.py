"""Fixtures for tests against a real S3 API: a moto server on 127.0.0.1 and a bucket per test.

Import the fixtures into a test module (``from moto_s3 import moto_endpoint,
network_guard, s3_bucket, s3_env, s3_requests``). ``s3_env`` points every S3 client at
the local server through environment variables, before any client is created. During
each test that uses it, socket connections and name lookups of any host other than the
loopback address are blocked, so a client that ignores the endpoint fails instead of
reaching AWS.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import botocore.session
import fsspec
import pytest
from fsspec.registry import registry as loaded_filesystems
from moto.server import ThreadedMotoServer

from grdr_core import remote

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
REGION = "us-east-1"

# The moto server runs on werkzeug, which logs one line per request, for example
# '127.0.0.1 - - [date] "GET /bucket/key HTTP/1.1" 200 -'. For most statuses other than
# 200 (206 and 404 among them), werkzeug wraps the request in one or more ANSI colour codes.
_REQUEST_LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP/[0-9.]+(?:\x1b\[0m)?" (\d{3})')


class RequestLog(logging.Handler):
    """Requests the moto server received, as (method, path, status) tuples."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = _REQUEST_LINE.search(record.getMessage())
        if match:
            self.requests.append((match.group(1), match.group(2), int(match.group(3))))

    def paths(self, method: str) -> list[str]:
        """Return the request paths of one HTTP method, query strings dropped, in arrival order."""
        return [path.split("?")[0] for m, path, _ in self.requests if m == method]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[tuple[str, RequestLog]]:
    """Start a moto server on a free port of 127.0.0.1 for the session and return its URL and request log."""
    log = RequestLog()
    werkzeug_logger = logging.getLogger("werkzeug")
    werkzeug_logger.addHandler(log)
    previous_level = werkzeug_logger.level
    werkzeug_logger.setLevel(logging.INFO)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}", log
    finally:
        server.stop()
        werkzeug_logger.removeHandler(log)
        werkzeug_logger.setLevel(previous_level)


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", errors="replace")
    if not isinstance(host, str):
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@dataclass
class NetworkGuard:
    """Record of the connections and name lookups that ``network_guard`` blocked."""

    blocked: list[str] = field(default_factory=list)

    def check(self, family: int, host: object, action: str) -> None:
        """Raise ``PermissionError`` for an internet address or host name that is not loopback."""
        if family not in (socket.AF_INET, socket.AF_INET6) or _is_loopback(host):
            return
        self.blocked.append(f"{action} {host!r}")
        raise PermissionError(f"test network guard: {action} {host!r} is blocked, only 127.0.0.1 may be reached")


@pytest.fixture
def network_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    """Block socket connections and name lookups of hosts other than the loopback address.

    The guard covers this process only. Decoder worker processes get the endpoint
    through the environment that ``DecodePool`` passes to them.
    """
    guard = NetworkGuard()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock: socket.socket, address: object) -> None:
        guard.check(sock.family, address[0] if isinstance(address, tuple) else None, "connection to")
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: object) -> int:
        guard.check(sock.family, address[0] if isinstance(address, tuple) else None, "connection to")
        return real_connect_ex(sock, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
        if host is not None:
            guard.check(socket.AF_INET, host, "name lookup of")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield guard
    assert not guard.blocked, f"the test tried to reach hosts other than the loopback address: {guard.blocked}"


def _clear_filesystem_caches() -> None:
    for cls in loaded_filesystems.values():
        cls.clear_instance_cache()


@pytest.fixture
def s3_env(
    moto_endpoint: tuple[str, RequestLog],
    network_guard: NetworkGuard,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[str]:
    """Point S3 clients at the moto server through environment variables and return the endpoint URL.

    Every object-store variable of the process is removed first (credentials, profiles,
    proxies), so nothing from the machine's own configuration applies.
    """
    endpoint, _ = moto_endpoint
    if not _is_loopback(urlsplit(endpoint).hostname):
        pytest.fail(f"the moto endpoint {endpoint} is not on the loopback address")

    for name in remote.client_environment():
        monkeypatch.delenv(name)
    missing = tmp_path / "no-aws-config"
    settings = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(missing),
        "AWS_SHARED_CREDENTIALS_FILE": str(missing),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    # Clients cached by an earlier test may use another endpoint.
    _clear_filesystem_caches()
    # Decoder workers run outside the network guard, so check here, without a request,
    # that a new client takes the endpoint from the environment as workers will.
    client_endpoint = botocore.session.Session().create_client("s3").meta.endpoint_url
    if client_endpoint != endpoint:
        pytest.fail(f"botocore ignores AWS_ENDPOINT_URL: a new S3 client uses {client_endpoint}, not {endpoint}")
    yield endpoint
    _clear_filesystem_caches()


@pytest.fixture
def s3_requests(moto_endpoint: tuple[str, RequestLog]) -> RequestLog:
    """Log of the requests the moto server receives during the test, empty at its start."""
    _, log = moto_endpoint
    log.requests.clear()
    return log


@pytest.fixture
def s3_bucket(s3_env: str) -> Iterator[str]:
    """Create an empty bucket on the moto server and return its URL, ``s3://<name>``."""
    name = f"grdr-test-{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("s3")
    fs.mkdir(name)
    yield f"s3://{name}"
    fs.rm(name, recursive=True)
