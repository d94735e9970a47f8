"""
Real etcd clusters for tests (a harness, not a test module).

L{EtcdCluster} starts one or three etcd members from Debian's C{etcd-server}
as child processes, each on free 127.0.0.1 ports with its data in a temporary
directory; it waits for them to be healthy with bounded polling, kills and
restarts members, and always cleans up: L{EtcdCluster.stop} in every path,
a context manager, and an C{atexit} hook for clusters a test forgot, and on
Linux every member gets SIGKILL should the test process itself die.

L{etcd_available} says whether the tests can run here, and if not, why.

The methods block (they run before a test, or where a test may wait);
L{EtcdCluster.when_healthy} waits in a thread for tests running under a
reactor that must keep turning meanwhile.

For tests that run under the reactor: L{wait_for} polls a condition with a
bound, and L{WatchGate} is an HTTP client for the etcd store that can refuse
watches, as if the members could not be reached for them.

TLS and auth: L{make_pki} writes a test CA, a certificate for the members
(127.0.0.1), a client certificate and an unrelated CA, made with
C{cryptography}; C{EtcdCluster(tls=...)} serves the client port over TLS
(requiring client certificates by default), and L{EtcdCluster.enable_auth}
creates etcd's root user, a user with read and write on one key prefix, and
turns auth on, through the JSON gateway (Debian ships no C{etcdctl} with
C{etcd-server}).

One module though long: the cluster harness, its TLS material and the gate
share the process management that must clean up on every path.
"""

from __future__ import annotations

import atexit
import base64
import datetime
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

#: The etcd binary: C{$KVTWIST_ETCD}, else the one on C{PATH}, else Debian's.
ETCD = os.environ.get("KVTWIST_ETCD") or shutil.which("etcd") or "/usr/bin/etcd"
#: The oldest etcd whose v3 JSON gateway answers under C{/v3/}.
MIN_VERSION = (3, 4)

# How long a member may take to become healthy; a cold start with fsync on a
# loaded CI machine takes a few seconds.
START_TIMEOUT = 30.0
# How long a killed or stopped process may take to exit.
EXIT_TIMEOUT = 10.0
# Pause between health polls, and the timeout of one poll.
POLL_INTERVAL = 0.05
POLL_TIMEOUT = 1.0
# Fresh ports are tried this many times when another process takes one
# between our probe and etcd's bind.
START_ATTEMPTS = 3

_live_clusters: "weakref.WeakSet[EtcdCluster]" = weakref.WeakSet()


class EtcdHarnessError(Exception):
    """A member would not start, become healthy or stop in time."""


def etcd_available() -> Tuple[bool, str]:
    """
    Whether etcd can be run here: C{(True, "etcd 3.4.23 at /usr/bin/etcd")}
    or C{(False, why not)}.
    """
    if not os.path.isfile(ETCD) or not os.access(ETCD, os.X_OK):
        return False, (
            "etcd is not installed (Debian package etcd-server; "
            "./run.sh test installs it when run as root)"
        )
    try:
        out = subprocess.run(
            [ETCD, "--version"],
            capture_output=True,
            timeout=10,
            env=_clean_env(),
            check=False,
        ).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, "%s --version failed: %s" % (ETCD, e)
    match = re.search(r"etcd Version: (\d+)\.(\d+)\.(\d+)", out)
    if not match:
        return False, "%s --version printed no version" % (ETCD,)
    version = tuple(int(n) for n in match.groups())
    if version[:2] < MIN_VERSION:
        return False, "etcd %d.%d.%d at %s is older than 3.4" % (version + (ETCD,))
    return True, "etcd %d.%d.%d at %s" % (version + (ETCD,))


def free_ports(count: int) -> List[int]:
    """C{count} distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = []
    try:
        # All held open together, so the kernel cannot hand out one twice.
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def refused_port(testcase) -> int:
    """
    A port on 127.0.0.1 that refuses connections until C{testcase} ends: a
    socket is bound to it and never listens. Unlike a port L{benchmarks.procs.free_port}
    found free, no other process (a parallel test worker's server, say) can
    take it meanwhile and answer.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    testcase.addCleanup(s.close)
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@dataclass(frozen=True)
class TLSFiles:
    """
    The PEM files of a test PKI (L{make_pki}): C{ca} signed the members'
    certificate (C{server_cert}, for 127.0.0.1) and two client
    certificates of one key (C{client_key}): C{client_cert} has no
    CommonName (etcd's JSON gateway refuses one that has, when auth is on),
    C{cn_client_cert} has CN C{kvtwist}. C{other_ca} signed nothing here.
    """

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    cn_client_cert: str
    client_key: str
    other_ca: str


def make_pki(directory: str) -> TLSFiles:
    """Write a test CA, a member and a client certificate, and another CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write(file_name: str, data: bytes, mode: int = 0o644) -> str:
        path = os.path.join(directory, file_name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def write_key(file_name: str, key) -> str:
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return write(file_name, data, 0o600)

    def certificate(subject: x509.Name, key, issuer_name, issuer_key, ca: bool, extensions=()):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            # Python 3.13's default TLS context verifies strictly (RFC 5280):
            # every certificate names its issuer's key, and says what its
            # own key is for.
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False,
                    key_agreement=not ca, key_cert_sign=ca, crl_sign=ca,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def pem(cert) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    paths = {}
    for label in ("ca", "other_ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = name("kvtwist test %s" % (label,))
        cert = certificate(subject, key, subject, key, True)
        paths[label] = (key, cert, write(label + ".pem", pem(cert)))
    ca_key, ca_cert, _ = paths["ca"]
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = certificate(
        name("etcd test member"),
        server_key,
        ca_cert.subject,
        ca_key,
        False,
        [
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            # etcd's JSON gateway dials etcd's own gRPC server with the
            # member's certificate, so with --client-cert-auth it must be
            # good for client authentication too.
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
        ],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client, cn_client = (
        certificate(
            subject,
            client_key,
            ca_cert.subject,
            ca_key,
            False,
            [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
        )
        for subject in (
            x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvtwist")]),
            name("kvtwist"),
        )
    )
    return TLSFiles(
        ca=paths["ca"][2],
        server_cert=write("member.pem", pem(server)),
        server_key=write_key("member-key.pem", server_key),
        client_cert=write("client.pem", pem(client)),
        cn_client_cert=write("client-cn.pem", pem(cn_client)),
        client_key=write_key("client-key.pem", client_key),
        other_ca=paths["other_ca"][2],
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _prefix_end(key: bytes) -> bytes:
    """etcd's range end of every key starting with C{key} (non-empty, not all 0xff)."""
    end = bytearray(key)
    while end[-1] == 0xFF:
        end.pop()
    end[-1] += 1
    return bytes(end)


def _clean_env() -> Dict[str, str]:
    # etcd reads ETCD_* variables as flags: one in the test's environment
    # must not reconfigure the members.
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}


def _prctl():
    """libc's prctl, resolved in the parent (a forked child must not dlopen)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl() if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """
    In the child before exec: have the kernel SIGKILL this member when the
    thread that started it dies (so spawn from the main thread), so that a
    test run killed with -9 leaves no etcd behind.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Member:
    """
    One etcd member: its name, ports, data directory, log file and process.
    """

    def __init__(self, name: str, directory: str, scheme: str = "http") -> None:
        self.name = name
        self.scheme = scheme
        self.data_dir = os.path.join(directory, name + ".etcd")
        self.log_path = os.path.join(directory, name + ".log")
        self.client_port = 0
        self.peer_port = 0
        self.process: Optional[subprocess.Popen] = None

    @property
    def client_url(self) -> str:
        """The member's client (and JSON gateway) URL: https with TLS."""
        return "%s://127.0.0.1:%d" % (self.scheme, self.client_port)

    @property
    def peer_url(self) -> str:
        """The member's peer (raft) URL."""
        return "http://127.0.0.1:%d" % (self.peer_port,)

    @property
    def running(self) -> bool:
        """Whether its process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The end of its log, to explain a failure."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class EtcdCluster:
    """
    A cluster of C{size} etcd members (1, or 3 to lose one or two) under
    C{base_dir} (a new temporary directory when L{None}; removed by L{stop}
    if it made it).

    Typical use::

        cluster = EtcdCluster(3)
        cluster.start()
        try:
            ...cluster.client_urls..., cluster.kill(0), cluster.restart(0)
        finally:
            cluster.stop()

    @param extra_args: more etcd flags for every member (e.g.
        C{["--max-txn-ops", "256"]}).
    @param fast_election: shorten heartbeat and election timeouts so a
        member elects itself in a fraction of a second. The default does so
        for one member only, which has no peer to lose; several members keep
        etcd's defaults, so a loaded machine does not cause elections.
    @param tls: serve the client port over TLS with these files (the peer
        port stays plain: tests run on loopback).
    @param client_cert_auth: with C{tls}, require a client certificate
        signed by the CA (etcd's C{--client-cert-auth} and
        C{--trusted-ca-file}; without them any client may connect).

    @ivar root_password: the password of etcd's root user, once
        L{enable_auth} made it.
    """

    def __init__(
        self,
        size: int = 1,
        base_dir: Optional[str] = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = START_TIMEOUT,
        fast_election: Optional[bool] = None,
        tls: Optional[TLSFiles] = None,
        client_cert_auth: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one member")
        self.size = size
        self.extra_args = list(extra_args)
        if fast_election if fast_election is not None else size == 1:
            self.extra_args = [
                "--heartbeat-interval", "20", "--election-timeout", "200",
            ] + self.extra_args
        self.start_timeout = start_timeout
        self._own_dir = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="kvtwist-etcd-")
        os.makedirs(self.base_dir, exist_ok=True)
        self.token = "kvtwist-test-%d-%d" % (os.getpid(), id(self))
        self.tls = tls
        if tls is not None:
            self.extra_args += ["--cert-file", tls.server_cert, "--key-file", tls.server_key]
            if client_cert_auth:
                # A trusted CA alone already makes etcd ask for certificates.
                self.extra_args += ["--trusted-ca-file", tls.ca, "--client-cert-auth"]
        scheme = "https" if tls is not None else "http"
        self.members = [Member("m%d" % i, self.base_dir, scheme) for i in range(size)]
        self.started = False
        self.root_password: Optional[str] = None

    # -- properties --------------------------------------------------------

    @property
    def client_urls(self) -> List[str]:
        """Every member's client URL, in member order."""
        return [m.client_url for m in self.members]

    def __enter__(self) -> "EtcdCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "EtcdCluster":
        """
        Start every member and wait until all are healthy.

        @raise EtcdHarnessError: if they would not; nothing is left running.
        """
        if self.started:
            return self
        _live_clusters.add(self)
        last = ""
        for attempt in range(START_ATTEMPTS):
            ports = free_ports(2 * self.size)
            for member in self.members:
                member.client_port, member.peer_port = ports.pop(), ports.pop()
                shutil.rmtree(member.data_dir, ignore_errors=True)
                # A fresh log per attempt, so an old "address already in
                # use" does not decide about this one.
                if os.path.exists(member.log_path):
                    os.unlink(member.log_path)
            try:
                for member in self.members:
                    self._spawn(member, "new")
                self.wait_healthy(timeout=self.start_timeout)
            except BaseException as e:
                if not isinstance(e, EtcdHarnessError):
                    # OSError from exec, KeyboardInterrupt...: clean up.
                    self.stop()
                    raise
                last = str(e)
                in_use = any(
                    "address already in use" in m.log_tail(50) for m in self.members
                )
                self._kill_all()
                if in_use:
                    continue
                self.stop()
                raise
            self.started = True
            return self
        self.stop()
        raise EtcdHarnessError(
            "etcd would not start after %d tries with fresh ports: %s"
            % (START_ATTEMPTS, last)
        )

    def _initial_cluster(self) -> str:
        return ",".join("%s=%s" % (m.name, m.peer_url) for m in self.members)

    def _spawn(self, member: Member, state: str) -> None:
        """Start C{member}'s process (it must not be running)."""
        if member.running:
            raise EtcdHarnessError("%s is already running" % (member.name,))
        args = [
            ETCD,
            "--name", member.name,
            "--data-dir", member.data_dir,
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", self._initial_cluster(),
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--logger", "zap",
            "--log-outputs", "stderr",
        ] + self.extra_args
        log = open(member.log_path, "ab")
        try:
            member.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
                cwd=self.base_dir,
                # Its own session: a ^C meant for the test runner does not
                # reach it half-way; stop() ends it.
                start_new_session=True,
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
            )
        finally:
            log.close()

    def kill(self, index: int) -> None:
        """SIGKILL member C{index} and wait (bounded) until it is gone."""
        member = self.members[index]
        process = member.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL)
        try:
            process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise EtcdHarnessError("%s did not die after SIGKILL" % (member.name,))

    def restart(self, index: int, wait: bool = True, timeout: Optional[float] = None) -> None:
        """
        Start member C{index} again on its ports and data (killing it first
        if it runs). With C{wait}, return once it is healthy, which needs a
        quorum of the cluster running. Call it (like L{start}) from the main
        thread: members die with the thread that started them.
        """
        member = self.members[index]
        self.kill(index)
        # With its data directory in place etcd rejoins from its WAL and
        # ignores the initial-cluster flags.
        self._spawn(member, "existing")
        if wait:
            self.wait_healthy([index], timeout=timeout or self.start_timeout)

    def stop(self, graceful: bool = False) -> None:
        """
        Stop every member and remove the data if this cluster made the
        directory. Safe to call more than once and after a failed start.

        @param graceful: SIGTERM first and wait a moment. By default members
            get SIGKILL at once: a cluster member shutting down gracefully
            waits seconds for peers that are stopping too, and etcd's WAL
            survives SIGKILL anyway.
        """
        if graceful:
            for member in self.members:
                if member.running:
                    member.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + EXIT_TIMEOUT / 2
            for member in self.members:
                if member.process is None:
                    continue
                try:
                    member.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        self._kill_all()
        self.started = False
        _live_clusters.discard(self)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _kill_all(self) -> None:
        for index, member in enumerate(self.members):
            try:
                self.kill(index)
            except EtcdHarnessError:
                pass

    # -- health ------------------------------------------------------------

    def is_healthy(self, index: int) -> bool:
        """
        One poll of member C{index}'s C{/health}: true when it runs, has a
        leader and serves a read through raft.
        """
        member = self.members[index]
        if not member.running:
            return False
        try:
            with urllib.request.urlopen(
                member.client_url + "/health", timeout=POLL_TIMEOUT, context=self.ssl_context()
            ) as r:
                body = json.loads(r.read().decode("utf-8"))
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return isinstance(body, dict) and body.get("health") == "true"

    def wait_healthy(
        self, members: Optional[Iterable[int]] = None, timeout: float = START_TIMEOUT
    ) -> None:
        """
        Poll until every member in C{members} (all by default) is healthy.

        @raise EtcdHarnessError: after C{timeout} seconds, or as soon as one
            of them has exited, with the end of its log.
        """
        indexes = list(range(self.size)) if members is None else list(members)
        deadline = time.monotonic() + timeout
        pending = set(indexes)
        while pending:
            for index in sorted(pending):
                member = self.members[index]
                if member.process is not None and member.process.poll() is not None:
                    raise EtcdHarnessError(
                        "etcd %s exited with %s:\n%s"
                        % (member.name, member.process.returncode, member.log_tail())
                    )
                if self.is_healthy(index):
                    pending.discard(index)
            if not pending:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(self.members[i].name for i in sorted(pending))
                tails = "\n".join(
                    "--- %s\n%s" % (self.members[i].name, self.members[i].log_tail())
                    for i in sorted(pending)
                )
                raise EtcdHarnessError(
                    "etcd %s not healthy after %gs:\n%s" % (names, timeout, tails)
                )
            time.sleep(POLL_INTERVAL)

    # -- the JSON gateway, TLS and auth ----------------------------------

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        """A client context trusting the test CA, with the client certificate."""
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=self.tls.ca)
        context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        return context

    def post(self, path: str, body: dict, token: Optional[str] = None, index: int = 0) -> Any:
        """
        POST C{body} to member C{index}'s JSON gateway (blocking) and return
        the answer's document.

        @raise EtcdHarnessError: for an error answer, with its message.
        """
        request = urllib.request.Request(
            self.members[index].client_url + path,
            data=json.dumps(body).encode("utf-8"),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        if token is not None:
            request.add_header("Authorization", token)
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl_context()) as r:
                return json.loads(r.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            answer = e.read().decode("utf-8", "replace")
            raise EtcdHarnessError("etcd refused %s: %s" % (path, answer))

    def enable_auth(self, user: str, password: str, prefix: str = "/kvtwist/") -> None:
        """
        Create etcd's root user, a role with read and write on C{prefix}
        and every key under it (the range C{prefix} to its range end), and
        C{user} with that role; then turn etcd's auth on.
        """
        self.root_password = "root-%d-%d" % (os.getpid(), id(self))
        role = user + "-rw"
        key = prefix.encode("utf-8")
        for path, body in [
            ("/v3/auth/user/add", {"name": "root", "password": self.root_password}),
            # etcd's root role exists without being added.
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/role/add", {"name": role}),
            (
                "/v3/auth/role/grant",
                {
                    "name": role,
                    "perm": {
                        "key": _b64(key),
                        "range_end": _b64(_prefix_end(key)),
                        "permType": "READWRITE",
                    },
                },
            ),
            ("/v3/auth/user/add", {"name": user, "password": password}),
            ("/v3/auth/user/grant", {"user": user, "role": role}),
            ("/v3/auth/enable", {}),
        ]:
            self.post(path, body)

    def admin(self, path: str, body: dict) -> Any:
        """POST as etcd's root user (after L{enable_auth})."""
        assert self.root_password is not None, "enable_auth() first"
        token = self.post("/v3/auth/authenticate", {"name": "root", "password": self.root_password})
        return self.post(path, body, token=token["token"])

    def when_healthy(
        self, members: Optional[Iterable[int]] = None, timeout: float = START_TIMEOUT
    ):
        """
        L{wait_healthy} in a thread: a Deferred for tests whose reactor must
        keep running while they wait.
        """
        from twisted.internet.threads import deferToThread

        return deferToThread(self.wait_healthy, members, timeout)


async def wait_for(condition, what: str, timeout: float = 10.0, interval: float = 0.01) -> None:
    """
    Let the reactor run until C{condition()} is true, checking every
    C{interval} seconds; fail with C{what} after C{timeout} seconds.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError("waited %gs in vain for %s" % (timeout, what))
        await deferLater(reactor, interval)


class WatchGate:
    """
    A treq-like client (C{post}) over its own connection pool that refuses
    C{/v3/watch} requests while C{blocked}, as an unreachable member would
    (connection refused), and passes everything else through.
    """

    def __init__(self) -> None:
        from treq.client import HTTPClient
        from twisted.internet import reactor
        from twisted.web.client import Agent, HTTPConnectionPool

        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 10
        self.http = HTTPClient(Agent(reactor, pool=self.pool))
        self.blocked = False
        self.refused = 0

    def post(self, url: str, **kw):
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError

        if self.blocked and url.endswith("/v3/watch"):
            self.refused += 1
            return fail(ConnectionRefusedError("the test blocks watches"))
        return self.http.post(url, **kw)

    def close(self):
        """Close the pooled connections (add as a cleanup)."""
        return self.pool.closeCachedConnections()


class ModelOnEtcd:
    """
    For a hypothesis model test on etcd (mixed into a trial C{TestCase}):
    one single-member etcd per test, a key prefix of its own for each case
    (L{new_prefix}), and store calls made from the thread hypothesis runs in
    (L{on_reactor}), since the stores answer on the reactor.
    """

    skip = None if etcd_available()[0] else etcd_available()[1]
    # Bounded: a hung case fails instead of stalling the suite.
    timeout = 120

    def setUp(self):
        self.cluster = EtcdCluster(1)
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        self._prefixes = itertools.count()
        return super().setUp()

    def new_prefix(self, name: str) -> str:
        return "/%s-%d/" % (name, next(self._prefixes))

    def on_reactor(self, method, *args):
        """C{method(*args)} called on the reactor; its Deferred's result."""
        from twisted.internet import reactor, threads

        return threads.blockingCallFromThread(reactor, method, *args)

    def open_etcd_store(self, prefix: str, clock):
        """An open L{EtcdStore} on the test's etcd under C{prefix}."""
        from twisted.internet import reactor

        from kvtwist.store.etcd.store import EtcdStore

        def opened():
            store = EtcdStore(self.cluster.client_urls, reactor, prefix=prefix, clock=clock)
            return store.open().addCallback(lambda _: store)

        return self.on_reactor(opened)


@atexit.register
def _stop_forgotten_clusters() -> None:
    """Kill the members of any cluster a test did not stop."""
    for cluster in list(_live_clusters):
        try:
            cluster.stop()
        except Exception:
            pass
