"""
TLS and authentication towards etcd (docs/scale-out.md), on real etcd
processes: the store over TLS with a client certificate (requests, commits,
leases and the watch), the whole store contract on an etcd with TLS, client
certificates and auth on, what a wrong CA, a missing client certificate, a
certificate with a CommonName, missing credentials or a wrong password do at
open, auth tokens that expire or are revoked and are renewed without a
caller noticing, and a real C{twistd kvcache --store etcds://...} serving
from such an etcd (and refusing to start, in one line, with a wrong password
or CA).

Certificates are made per test class with C{cryptography}
(L{tests.helpers.etcd.make_pki}); etcd listens on 127.0.0.1 only. Without an etcd
binary the tests that need one are skipped with the reason.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

# The module, not its classes: a TestCase imported by name would run twice.
import tests.contract.test_store_etcd as plain
from kvtwist.config import file_layer
from kvtwist.errors import StoreUnavailable
from kvtwist.model import Check, Put
from kvtwist.store.etcd.store import EtcdStore
from kvtwist.store.etcd.tls import EtcdCredentials, EtcdTLS
from tests.helpers.e2e import ServerProcess, http_request, start_server, temp_dir
from tests.helpers.etcd import EtcdCluster, etcd_available, make_pki, refused_port, wait_for
from tests.contract.store_contract import ExpectFailure, contract
from tests.helpers.paths import REPO

_AVAILABLE, _REASON = etcd_available()
SKIP = None if _AVAILABLE else _REASON

#: kvtwist's etcd user, and its password (spaces are part of a password).
USER = "kvtwist"
PASSWORD = "a test password, not a secret"
ROOT = REPO


class PKIMixin:
    """A test PKI per test class, removed after it (see L{make_pki})."""

    @classmethod
    def setUpClass(cls):
        cls.pki_dir = tempfile.mkdtemp(prefix="kvtwist-pki-")
        cls.pki = make_pki(cls.pki_dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.pki_dir, ignore_errors=True)


class SecureEtcdTestCase(PKIMixin, ExpectFailure, TestCase):
    """
    A fresh one-member etcd per test serving TLS, asking for client
    certificates, and (with C{auth}) with etcd's auth on and kvtwist's user
    allowed the C{/kvtwist/} prefix.
    """

    skip = SKIP
    # Bounded: a hung test fails instead of stalling the suite.
    timeout = 60
    auth = True
    extra_args: tuple = ()

    def setUp(self):
        self.cluster = EtcdCluster(1, tls=self.pki, extra_args=self.extra_args)
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        if self.auth:
            self.cluster.enable_auth(USER, PASSWORD)

    def client_tls(self, ca=None, cert=None) -> EtcdTLS:
        """The test CA (or C{ca}) and the client certificate without a CN (or C{cert})."""
        return EtcdTLS.from_files(
            ca or self.pki.ca, cert or self.pki.client_cert, self.pki.client_key
        )

    def new_store(self, **kw) -> EtcdStore:
        """A store on the cluster with the test's TLS and (with auth) credentials."""
        kw.setdefault("tls", self.client_tls())
        if self.auth:
            kw.setdefault("credentials", EtcdCredentials(USER, PASSWORD))
        return EtcdStore(kw.pop("endpoints", self.cluster.client_urls), reactor, **kw)

    async def open_store(self, **kw) -> EtcdStore:
        store = self.new_store(**kw)
        await store.open()
        self.addCleanup(store.close)
        return store

    async def refused_open(self, **kw) -> StoreUnavailable:
        """Open a store that must fail; check it left nothing open."""
        kw.setdefault("timeout", 1.0)
        store = self.new_store(**kw)
        try:
            await store.open()
        except StoreUnavailable as e:
            error = e
        else:
            await store.close()
            self.fail("the store opened")
        # Nothing stayed open: calls are refused at once.
        closed = await self.expect(StoreUnavailable, store.get("a"))
        self.assertIn("closed", closed.detail)
        return error

    async def round_trip(self, a: EtcdStore, b: EtcdStore) -> None:
        """Commits, reads, a listing, a lease and the watch, between two stores."""
        heard = []
        b.add_listener(heard.append)
        first = await a.commit([Put("k", b"1", "text/plain")], [Check.absent("k")])
        second = await a.commit(
            [Put("k", b"2"), Put("ttl", b"t", expires=reactor.seconds() + 60)],
            [Check.equals("k", first.revision)],
        )
        entry = await b.get("k")
        self.assertEqual((entry.value, entry.mod_revision, entry.version), (b"2", second.revision, 2))
        page = await b.list("", None, 10)
        self.assertEqual([e.key for e in page.entries], ["k", "ttl"])
        self.assertIsNotNone((await a.get("ttl")).expires)
        await wait_for(lambda: len(heard) >= 2, "b's watch to deliver a's commits")
        self.assertEqual(heard, [first, second])
        self.assertTrue(b.watch_endpoint.startswith("https://"))

    def settle(self, d):
        """Test coroutines are run by trial (see L{contract})."""
        return d


class TLSTests(SecureEtcdTestCase):
    """The store on an etcd that serves TLS and asks for client certificates (auth off)."""

    auth = False

    @contract
    async def test_round_trip_with_client_certificate(self):
        """Commits, reads, listings, leases and the watch all work over TLS with a client certificate."""
        a = await self.open_store()
        b = await self.open_store()
        self.assertEqual(a.active_endpoint, self.cluster.client_urls[0])
        self.assertTrue(a.active_endpoint.startswith("https://127.0.0.1:"))
        await self.round_trip(a, b)

    @contract
    async def test_wrong_ca_fails_open(self):
        """A member certificate that does not chain to the configured CA fails open, saying so."""
        error = await self.refused_open(tls=self.client_tls(ca=self.pki.other_ca))
        self.assertIn(self.cluster.client_urls[0], error.detail)
        self.assertIn("TLS handshake failed: certificate verify failed", error.detail)

    @contract
    async def test_missing_client_certificate_fails_open(self):
        """Without a client certificate etcd ends the handshake; open says so."""
        error = await self.refused_open(tls=EtcdTLS.from_files(self.pki.ca))
        self.assertIn("TLS handshake failed", error.detail)
        self.assertIn("certificate", error.detail)

    @contract
    async def test_plain_http_to_tls_member(self):
        """A plain http endpoint of a TLS member fails open with a hint to use etcds://."""
        url = self.cluster.client_urls[0].replace("https://", "http://")
        error = await self.refused_open(endpoints=[url], tls=None)
        self.assertIn("etcds://", error.detail)

    @contract
    async def test_failover_from_dead_tls_endpoint(self):
        """A dead https endpoint is skipped like a plain one: the store works through the next."""
        dead = "https://127.0.0.1:%d" % (refused_port(self),)
        store = await self.open_store(endpoints=[dead] + self.cluster.client_urls)
        await store.commit([Put("a", b"1")])
        self.assertEqual(store.active_endpoint, self.cluster.client_urls[0])
        self.assertEqual(store.watch_endpoint, self.cluster.client_urls[0])


class AuthTests(SecureEtcdTestCase):
    """The store as an etcd user, over TLS with a client certificate."""

    @contract
    async def test_round_trip_with_auth(self):
        """Every request and the watch carry the token: a full round trip works as kvtwist's user."""
        a = await self.open_store()
        b = await self.open_store()
        self.assertEqual(a.gateway.authentications, 1)
        await self.round_trip(a, b)
        # The token stays valid: no further authentication was needed.
        self.assertEqual((a.gateway.authentications, b.gateway.authentications), (1, 1))

    @contract
    async def test_wrong_password_fails_open(self):
        """A wrong password fails open at once, naming the user and never the password."""
        began = time.monotonic()
        error = await self.refused_open(credentials=EtcdCredentials(USER, "not the password"))
        self.assertLess(time.monotonic() - began, 1.0)
        self.assertIn("etcd refused the credentials of user 'kvtwist'", error.detail)
        self.assertIn("authentication failed", error.detail)
        self.assertNotIn("not the password", error.detail)

    @contract
    async def test_unknown_user_fails_open(self):
        """An unknown user is refused like a wrong password."""
        error = await self.refused_open(credentials=EtcdCredentials("nobody", PASSWORD))
        self.assertIn("etcd refused the credentials of user 'nobody'", error.detail)

    @contract
    async def test_no_credentials(self):
        """
        Without credentials the watch is refused at open with a hint, and so
        is a read (etcd judges a request without a token, with client
        certificates on, as the gateway's own certificate: no user).
        """
        error = await self.refused_open(credentials=None)
        self.assertIn("permission denied", error.detail)
        self.assertIn("no credentials", error.detail)
        store = await self.open_store(credentials=None, watch=False)
        error = await self.expect(StoreUnavailable, store.get("a"))
        self.assertIn("kvtwist has no etcd user", error.detail)

    @contract
    async def test_user_without_permission(self):
        """A user with no role on the prefix gets StoreUnavailable saying which permission it lacks."""
        self.cluster.admin("/v3/auth/user/add", {"name": "stranger", "password": PASSWORD})
        store = await self.open_store(credentials=EtcdCredentials("stranger", PASSWORD), watch=False)
        error = await self.expect(StoreUnavailable, store.commit([Put("a", b"1")]))
        self.assertIn("permission denied", error.detail)
        self.assertIn("etcd user 'stranger' needs read and write permission", error.detail)

    @contract
    async def test_certificate_with_common_name_refused(self):
        """
        etcd's gateway refuses, with auth on, a client certificate that has
        a CommonName: open says so and what to do.
        """
        error = await self.refused_open(tls=self.client_tls(cert=self.pki.cn_client_cert))
        self.assertIn("client certificate without a CN", error.detail)

    @contract
    async def test_revoked_token_is_renewed(self):
        """
        A token etcd revoked (the user's password was set again) is renewed
        once, transparently, for reads and for writes.
        """
        store = await self.open_store()
        await store.commit([Put("a", b"1")])
        self.cluster.admin("/v3/auth/user/changepw", {"name": USER, "password": PASSWORD})
        self.assertEqual((await store.get("a")).value, b"1")
        self.assertEqual(store.gateway.authentications, 2)
        self.cluster.admin("/v3/auth/user/changepw", {"name": USER, "password": PASSWORD})
        result = await store.commit([Put("a", b"2")])
        self.assertEqual((await store.get("a")).mod_revision, result.revision)
        self.assertEqual(store.gateway.authentications, 3)

    @contract
    async def test_changed_password_fails_clearly(self):
        """When the password itself changed, the renewal fails with the credentials message."""
        store = await self.open_store(watch=False)
        self.cluster.admin("/v3/auth/user/changepw", {"name": USER, "password": "new one"})
        error = await self.expect(StoreUnavailable, store.get("a"))
        self.assertIn("etcd refused the credentials of user 'kvtwist'", error.detail)


class ExpiringTokenTests(SecureEtcdTestCase):
    """Auth tokens that etcd lets expire after one idle second (C{--auth-token-ttl 1})."""

    extra_args = ("--auth-token-ttl", "1")
    #: Idle long enough for etcd's token keeper (one-second ticks) to drop it.
    IDLE = 2.5

    @contract
    async def test_expired_token_renewed_for_reads_writes_and_watch(self):
        """
        After the token expired, a commit, concurrent reads and a restarted
        watch each go through with one new token; callers see nothing.
        """
        store = await self.open_store()
        other = await self.open_store(watch=False)
        await store.commit([Put("a", b"1")])
        await deferLater(reactor, self.IDLE)
        # The commit's first request is refused, the token renewed, the
        # commit applied once.
        result = await store.commit([Put("a", b"2")], [Check.equals("a", store.revision)])
        self.assertEqual(store.gateway.authentications, 2)
        self.assertEqual((await other.get("a")).mod_revision, result.revision)
        await deferLater(reactor, self.IDLE)
        # Concurrent reads share one authentication.
        values = await gatherResults([store.get("a") for _ in range(5)])
        self.assertEqual({entry.value for entry in values}, {b"2"})
        self.assertEqual(store.gateway.authentications, 3)
        await deferLater(reactor, self.IDLE)
        # A watch restarted with an expired token is refused by etcd, and
        # retried with a new one.
        # The running watch outlived its token.
        self.assertTrue(store.watching)
        heard = []
        store.add_listener(heard.append)
        store.watch_loop.stream.abort("the test drops the watch")
        await wait_for(lambda: not store.watching, "the watch to be reported lost")
        await wait_for(lambda: store.watching, "the watch to run again")
        self.assertEqual(store.gateway.authentications, 4)
        later = await other.commit([Put("b", b"x")])
        await wait_for(lambda: heard, "the watch to deliver another store's commit")
        self.assertEqual(heard, [later])


class TLSAuthContractTests(PKIMixin, plain.EtcdStoreContractTests):
    """
    The whole store contract on an etcd with TLS, client certificates and
    auth on, as kvtwist's user.
    """

    def setUp(self):
        self.cluster = EtcdCluster(1, tls=self.pki)
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        self.cluster.enable_auth(USER, PASSWORD)
        self.clock = Clock()
        self.clock.advance(reactor.seconds())

    async def open_store(self, endpoints=None, **kw):
        kw.setdefault(
            "tls", EtcdTLS.from_files(self.pki.ca, self.pki.client_cert, self.pki.client_key)
        )
        kw.setdefault("credentials", EtcdCredentials(USER, PASSWORD))
        return await super().open_store(endpoints, **kw)


class TLSFileTests(PKIMixin, SynchronousTestCase):
    """L{EtcdTLS.from_files} refuses unusable files, naming them (no etcd needed)."""

    def assertRefused(self, needles, **files):
        with self.assertRaises(ValueError) as caught:
            EtcdTLS.from_files(**files)
        for needle in needles:
            self.assertIn(needle, str(caught.exception))

    def test_unusable_files(self):
        """A missing file, a file without a certificate, a foreign key, half a pair: each is named."""
        missing = os.path.join(self.pki_dir, "missing.pem")
        self.assertRefused(["cannot read the etcd CA file", missing], ca=missing)
        self.assertRefused(
            ["holds no PEM certificate", self.pki.client_key], ca=self.pki.client_key
        )
        self.assertRefused(
            ["does not belong to the certificate", self.pki.server_key],
            cert=self.pki.client_cert,
            key=self.pki.server_key,
        )
        self.assertRefused(["needs its key"], cert=self.pki.client_cert)
        self.assertRefused(
            ["holds no unencrypted PEM private key"], cert=self.pki.client_cert, key=self.pki.ca
        )

    def test_good_files(self):
        """The CA, a client certificate and its key make a policy with one creator per member."""
        tls = EtcdTLS.from_files(self.pki.ca, self.pki.client_cert, self.pki.client_key)
        creator = tls.creatorForNetloc(b"127.0.0.1", 2379)
        self.assertIs(tls.creatorForNetloc(b"127.0.0.1", 2379), creator)
        self.assertIsNot(tls.creatorForNetloc(b"127.0.0.1", 2380), creator)

    def test_credentials_hide_the_password(self):
        """The credentials' repr shows the user, never the password."""
        text = repr(EtcdCredentials(USER, PASSWORD))
        self.assertIn(USER, text)
        self.assertNotIn(PASSWORD, text)


class TwistdTests(PKIMixin, SynchronousTestCase):
    """The real C{twistd kvcache} on an etcd with TLS, client certificates and auth."""

    skip = SKIP

    def setUp(self):
        self.cluster = EtcdCluster(1, tls=self.pki)
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        self.cluster.enable_auth(USER, PASSWORD)
        self.base = temp_dir(self, "etcd-tls")
        self.password_file = self.write("etcd-password", PASSWORD + "\n")

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.base, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, 0o600)
        return path

    def args(self, ca=None, password_file=None):
        """C{twistd kvcache} options for the cluster."""
        store = "etcds://" + ",".join(u.split("//", 1)[1] for u in self.cluster.client_urls)
        return [
            "--store", store,
            "--etcd-ca", ca or self.pki.ca,
            "--etcd-cert", self.pki.client_cert,
            "--etcd-key", self.pki.client_key,
            "--etcd-user", USER,
            "--etcd-password-file", password_file or self.password_file,
        ]

    def failed_start(self, args):
        """Launch a server that must exit; return its status and output."""
        server = ServerProcess(os.path.join(self.base, "data"), args, log_dir=self.base)
        self.addCleanup(server.stop)
        server.launch()
        return server.wait(), server.log_text()

    def test_serves_from_tls_auth_etcd(self):
        """A node with --store etcds:// and credentials serves, writing into etcd; the password is never logged."""
        node = start_server(self, extra_args=self.args())
        status, headers, _ = http_request(node.url, "PUT", "/v1/kv/greeting", b"hello")
        self.assertEqual(status, 201)
        status, headers, body = http_request(node.url, "GET", "/v1/kv/greeting?consistent=1")
        self.assertEqual((status, body), (200, b"hello"))
        key = base64.b64encode(b"/kvtwist/kv/greeting").decode("ascii")
        self.assertEqual(self.cluster.admin("/v3/kv/range", {"key": key})["count"], "1")
        self.assertEqual(node.terminate(), 0)
        self.assertNotIn(PASSWORD, node.log_text())

    def test_wrong_password_stops_startup(self):
        """A wrong password stops twistd with status 1 and one line naming the problem."""
        wrong = "wrong-password-4711"
        code, log = self.failed_start(self.args(password_file=self.write("bad", wrong + "\n")))
        self.assertEqual(code, 1)
        lines = [line for line in log.splitlines() if "cannot open its store" in line]
        self.assertEqual(len(lines), 1, log)
        self.assertIn("etcd refused the credentials of user 'kvtwist'", lines[0])
        self.assertNotIn(wrong, log)
        self.assertNotIn("Traceback", log)

    def test_wrong_ca_stops_startup(self):
        """A CA that did not sign etcd's certificate stops twistd with status 1, saying so."""
        code, log = self.failed_start(self.args(ca=self.pki.other_ca))
        self.assertEqual(code, 1)
        self.assertIn("certificate verify failed", log)
        self.assertNotIn("Traceback", log)

    def test_unreadable_ca_file_stops_startup(self):
        """A CA file that cannot be read stops twistd before it starts, naming the file."""
        missing = os.path.join(self.base, "missing-ca.pem")
        code, log = self.failed_start(self.args(ca=missing))
        self.assertNotEqual(code, 0)
        self.assertIn("cannot read the etcd CA file %s" % (missing,), log)
        self.assertNotIn("starting on", log)


class ScaleOutDocTests(SynchronousTestCase):
    """The config files shown in docs/scale-out.md are valid."""

    def test_documented_files_parse(self):
        """Every TOML example in scale-out.md has only known keys with valid values."""
        with open(os.path.join(ROOT, "docs", "scale-out.md"), encoding="utf-8") as f:
            blocks = re.findall(r"```toml\n(.*?)```", f.read(), re.S)
        self.assertGreaterEqual(len(blocks), 4)
        base = temp_dir(self, "docs")
        for index, block in enumerate(blocks):
            path = os.path.join(base, "doc-%d.toml" % (index,))
            with open(path, "w", encoding="utf-8") as f:
                f.write(block)
            values, _ = file_layer(path)
            self.assertTrue(values["store"].startswith(("etcd://", "etcds://")), block)
