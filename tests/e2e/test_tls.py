"""
TLS and unix-socket listeners of the real C{twistd kvcache}
(docs/configuration.md, "Endpoints").

A self-signed certificate for 127.0.0.1 is made at run time with
C{cryptography}. Against C{--listen ssl:...} the tests check, with
Python's own C{ssl} client pinned to one protocol version at a time, that
TLS 1.2 and 1.3 handshakes verify the certificate and serve HTTP, that a
TLS 1.1 client is refused by the server (a protocol_version alert from it,
not a client that cannot even offer 1.1), and that plain HTTP to the TLS
port is never answered. A unix socket (C{--listen unix:PATH:mode=600}) is
served too, and its file is private.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import tempfile
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.e2e import HOST, KEEP_ENV, ServerProcess, temp_dir


def make_certificate(directory: str) -> tuple:
    """Write a self-signed key and certificate for 127.0.0.1; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvtwist test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = os.path.join(directory, "key.pem")
    cert_path = os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.chmod(key_path, 0o600)
    with open(cert_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def client_context(cert_path: str, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A verifying client context that speaks exactly C{version}."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cert_path)
    with warnings.catch_warnings():
        # TLSVersion.TLSv1_1 is deprecated, which is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    # Let the client offer old protocols at all (OpenSSL's security level
    # would refuse TLS 1.1 on the client side), so that a refusal seen
    # below is the server's.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def https_get(port: int, context: ssl.SSLContext, path: str = "/v1/healthz") -> tuple:
    """GET C{path} over TLS: C{(negotiated version, status, body)}."""
    with socket.create_connection((HOST, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as tls:
            tls.sendall(
                b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                % (path.encode("ascii"),)
            )
            response = http.client.HTTPResponse(tls)
            response.begin()
            return tls.version(), response.status, response.read()


class TLSTests(SynchronousTestCase):
    """One kvcache listening with TLS only, shared by the tests."""

    @classmethod
    def setUpClass(cls):
        cls.base = tempfile.mkdtemp(prefix="kvtwist-tls-")
        cls.key, cls.cert = make_certificate(cls.base)
        cls.server = ServerProcess(
            os.path.join(cls.base, "data"),
            [
                "--listen",
                "ssl:{port}:privateKey=%s:certKey=%s:interface=127.0.0.1"
                % (cls.key, cls.cert),
            ],
            log_dir=cls.base,
            scheme="https",
        )
        try:
            cls.server.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        if not os.environ.get(KEEP_ENV):
            shutil.rmtree(cls.base, True)

    def test_tls_1_2(self):
        """A TLS 1.2 client verifies the certificate and is served."""
        version, status, body = https_get(self.server.port, client_context(self.cert, ssl.TLSVersion.TLSv1_2))
        self.assertEqual((version, status, body), ("TLSv1.2", 200, b'{"status": "alive"}'))

    def test_tls_1_3(self):
        """A TLS 1.3 client verifies the certificate and is served."""
        version, status, _ = https_get(self.server.port, client_context(self.cert, ssl.TLSVersion.TLSv1_3))
        self.assertEqual((version, status), ("TLSv1.3", 200))

    def test_tls_1_1_refused_by_server(self):
        """A TLS 1.1 client is refused: the server answers with a protocol_version alert."""
        context = client_context(self.cert, ssl.TLSVersion.TLSv1_1)
        with self.assertRaises(ssl.SSLError) as caught:
            https_get(self.server.port, context)
        # An alert received from the server, not the client's own refusal
        # to offer TLS 1.1 (that would be NO_PROTOCOLS_AVAILABLE).
        self.assertIn("ALERT_PROTOCOL_VERSION", caught.exception.reason or str(caught.exception))

    def test_plain_http_not_served(self):
        """Plain HTTP to the TLS port gets no HTTP answer; the connection is closed."""
        with socket.create_connection((HOST, self.server.port), timeout=10) as sock:
            sock.sendall(b"GET /v1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            received = b""
            try:
                for _ in range(100):
                    data = sock.recv(4096)
                    if not data:
                        break
                    received += data
            except (ConnectionResetError, socket.timeout):
                pass
        self.assertFalse(received.startswith(b"HTTP/"), received[:80])
        self.assertNotIn(b"alive", received)

    def test_write_and_read_over_tls(self):
        """Writes and reads work over TLS like over TCP."""
        context = client_context(self.cert, ssl.TLSVersion.TLSv1_3)
        connection = http.client.HTTPSConnection(HOST, self.server.port, timeout=10, context=context)
        self.addCleanup(connection.close)
        connection.request("PUT", "/v1/kv/secure", body=b"over tls")
        response = connection.getresponse()
        self.assertEqual((response.status, response.read()[:1]), (201, b"{"))
        connection.request("GET", "/v1/kv/secure")
        response = connection.getresponse()
        self.assertEqual((response.status, response.read()), (200, b"over tls"))


class UnixSocketTests(SynchronousTestCase):
    """--listen unix:PATH."""

    def test_unix_socket(self):
        """
        kvcache serves HTTP on a unix socket given with --listen (next to a
        loopback TCP listener), the socket file has the mode asked for, and
        what is written through one listener is read through the other.
        """
        base = temp_dir(self, "unix")
        path = os.path.join(base, "kv.sock")
        server = ServerProcess(
            os.path.join(base, "data"),
            ["--listen", "tcp:{port}:interface=127.0.0.1", "--listen", "unix:%s:mode=600" % (path,)],
            log_dir=base,
        )
        self.addCleanup(server.stop)
        server.start()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

        connection = _UnixHTTPConnection(path)
        self.addCleanup(connection.close)
        connection.request("PUT", "/v1/kv/via-unix", body=b"hello")
        response = connection.getresponse()
        self.assertEqual((response.status, response.read()[:1]), (201, b"{"))

        tcp = http.client.HTTPConnection(HOST, server.port, timeout=10)
        self.addCleanup(tcp.close)
        tcp.request("GET", "/v1/kv/via-unix")
        response = tcp.getresponse()
        self.assertEqual((response.status, response.read()), (200, b"hello"))
        self.assertEqual(server.terminate(), 0)
        self.assertFalse(os.path.exists(path), "the socket file outlived the server")


class _UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)
