"""A `redis-server` of the tests' own on a free loopback port: never the Redis other programs share on 6379.

Tests and the benchmark start one (or several) and may empty any database of it, since nobody else uses it.
`TEST_REDIS_URL` names a Redis given to the tests instead (for a machine without `redis-server`); the tests
then empty its database, so give them one of their own.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

START_TIMEOUT = 5.0


class RedisUnavailable(Exception):
    """redis-server is not installed, or did not start; the message says which."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Tls:
    """A server certificate for 127.0.0.1 and localhost, its key, and the file a client trusts it by."""

    cert_file: Path
    key_file: Path

    @property
    def ca_file(self) -> Path:
        return self.cert_file  # self-signed: the certificate is its own authority

    @classmethod
    def make(cls, folder: Path) -> Tls:
        """Write a new self-signed certificate (a day's validity) and its key into folder."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tests' redis-server")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        folder.mkdir(parents=True, exist_ok=True)
        tls = cls(folder / "redis.crt", folder / "redis.key")
        tls.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        tls.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        tls.key_file.chmod(0o600)
        return tls


class RedisServer:
    """A `redis-server` process without persistence on a port of its own, started and stopped by its owner.

    With tls, the port speaks TLS only (redis-server's --tls-port) and the URL is rediss://; with user and
    password, that ACL user is the only one (the default user is off) and the URL carries both.
    """

    def __init__(self, log_path: Path | None = None, port: int | None = None, extra_args: tuple[str, ...] = (),
                 tls: Tls | None = None, user: str | None = None, password: str | None = None) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.user, self.password = user, password
        self.url = self.url_for(0)
        self._own_folder = None if log_path is not None else tempfile.mkdtemp(prefix="tests-redis-")
        self.folder = Path(self._own_folder) if self._own_folder else log_path.parent  # type: ignore[union-attr]
        self.log_path = log_path or self.folder / "redis.log"
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    def url_for(self, db: int) -> str:
        """Return the URL of one of this server's databases."""
        scheme = "rediss" if self.tls else "redis"
        auth = f"{quote(self.user or '', safe='')}:{quote(self.password, safe='')}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """Return a plain client of this server (trusting its certificate when it has one)."""
        if self.tls:
            kwargs.setdefault("ssl_ca_certs", str(self.tls.ca_file))
        return redis.Redis.from_url(self.url, **kwargs)

    def _listen_args(self) -> list[str]:
        args = ["--bind", "127.0.0.1"]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert_file),
                     "--tls-key-file", str(self.tls.key_file), "--tls-ca-cert-file", str(self.tls.ca_file),
                     "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            # One argument a word: redis-server quotes an argument holding a space as one token.
            args += ["--user", "default", "off", "--user", str(self.user), "on", f">{self.password}", "~*", "&*",
                     "+@all"]
        return args

    def start(self) -> RedisServer:
        """Start the server (again, on the same port, empty) and wait until it answers PING."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise RedisUnavailable("redis-server is not installed: apt-get install redis-server (.ci/run does).")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [executable, *self._listen_args(), "--save", "", "--appendonly", "no",
                 "--dir", str(self.folder), *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        client = self.client(socket_connect_timeout=0.2)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    time.sleep(0.02)
        finally:
            client.close()
        log_text = self.log_path.read_text()  # before stop() removes a folder of its own
        self.stop()
        raise RedisUnavailable(f"redis-server on port {self.port} did not start:\n{log_text}")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send a signal (SIGKILL by default) and, unless it only pauses the server, wait for it to end."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            if sig not in (signal.SIGSTOP, signal.SIGCONT):
                self.process.wait(timeout=5)

    def stop(self) -> None:
        """Stop the server and remove the folder it was given, if it made one."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._own_folder and self.process is not None and self.process.poll() is not None:
            shutil.rmtree(self._own_folder, ignore_errors=True)


def given_redis_url() -> str | None:
    """Return TEST_REDIS_URL, a Redis database handed to the tests, or None to start one of their own."""
    return os.environ.get("TEST_REDIS_URL") or None


def must_fail() -> bool:
    """Whether a missing Redis fails the tests (CI) rather than skipping them (a developer's machine)."""
    return os.environ.get("CI") == "true"



class RedisClusterServers:
    """A Redis Cluster of `size` primaries (no replicas) on free loopback ports, made with `redis-cli --cluster create`.

    Each node keeps its cluster identity in a nodes.conf of its own folder, so a node killed and started again
    on its port rejoins as the owner of the same slots (empty: nothing is persisted). The nodes run with
    `cluster-require-full-coverage no`, as a cache should: while a node is down the others keep answering for
    their slots. `cluster-node-timeout` is short so the cluster notices a dead node within the tests' deadlines.
    """

    def __init__(self, folder: Path, size: int = 3, node_timeout_ms: int = 1000, tls: Tls | None = None,
                 user: str | None = None, password: str | None = None) -> None:
        self.folder = folder
        self.tls, self.user, self.password = tls, user, password
        self.nodes: list[RedisServer] = []
        for index in range(size):
            node_folder = folder / f"node{index}"
            node_folder.mkdir(parents=True, exist_ok=True)
            args = ("--cluster-enabled", "yes", "--cluster-config-file", str(node_folder / "nodes.conf"),
                    # The bus port's default, the port + 10000, may be taken or past 65535.
                    "--cluster-port", str(free_port()),
                    "--cluster-node-timeout", str(node_timeout_ms), "--cluster-require-full-coverage", "no",
                    # With tls the nodes also speak TLS to each other, as ElastiCache's do.
                    *(("--tls-cluster", "yes") if tls else ()))
            self.nodes.append(RedisServer(node_folder / "redis.log", extra_args=args, tls=tls, user=user,
                                          password=password))

    @property
    def url(self) -> str:
        """Return the URL of one node: a cluster client finds the others from it."""
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        """Start every node, join them into one cluster and wait until each says the cluster is ok."""
        redis_cli = shutil.which("redis-cli")
        if redis_cli is None:
            raise RedisUnavailable("redis-cli is not installed: apt-get install redis-tools (.ci/run does).")
        for node in self.nodes:
            node.start()
        tls_args = ["--tls", "--cacert", str(self.tls.ca_file)] if self.tls else []
        auth_args = ["--user", str(self.user), "--pass", self.password] if self.password else []
        created = subprocess.run(
            [redis_cli, *tls_args, *auth_args, "--no-auth-warning", "--cluster", "create",
             *(f"127.0.0.1:{node.port}" for node in self.nodes), "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        if created.returncode != 0:
            self.stop()
            raise RedisUnavailable(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
        self.wait_until_ok()
        return self

    def wait_until_ok(self, timeout: float = 15.0) -> None:
        """Wait until every node running reports cluster_state:ok with all slots assigned and every node known."""
        deadline = time.monotonic() + timeout
        while True:
            states = [self._state(node) for node in self.nodes]
            if all(state == "ok" for state in states):
                return
            if time.monotonic() > deadline:
                raise RedisUnavailable(f"the test cluster did not settle within {timeout} s: {states}")
            time.sleep(0.05)

    def _state(self, node: RedisServer) -> str:
        client = node.client(socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            info = client.cluster("info")
            known = int(info.get("cluster_known_nodes", 0))
            assigned = int(info.get("cluster_slots_assigned", 0))
            failing = int(info.get("cluster_slots_fail", 0)) + int(info.get("cluster_slots_pfail", 0))
            ok = info.get("cluster_state") == "ok" and known == len(self.nodes) and assigned == 16384 and not failing
            return "ok" if ok else f"{info.get('cluster_state')} known={known} assigned={assigned} failing={failing}"
        except redis.RedisError as exc:
            return type(exc).__name__
        finally:
            client.close()

    def node_for(self, key: str) -> RedisServer:
        """Return the node that owns the key's slot."""
        client = self.nodes[0].client(socket_timeout=1)
        try:
            slot = int(client.cluster("keyslot", key))
            for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return next(node for node in self.nodes if node.port == int(primary[1]))
        finally:
            client.close()
        raise LookupError(f"no node owns slot {slot}")

    def flush(self) -> None:
        """Empty every node (the cluster is the tests' own)."""
        for node in self.nodes:
            client = node.client(socket_timeout=1)
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
