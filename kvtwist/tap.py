# -*- test-case-name: tests.unit.test_config -*-
"""
The C{twistd kvcache} command: its L{Options} and L{makeService}.

The dropin in C{twisted/plugins/kvtwist_kvcache.py} only points here. The
options are built from L{kvtwist.config.SETTINGS}; L{Options.postOptions}
merges them with the config file and the environment
(L{kvtwist.config.resolve}), so after parsing every option holds its final
value whatever layer set it.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import textwrap
from types import SimpleNamespace
from typing import Any, Dict, List, Mapping, Optional

import twisted
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

import kvtwist
from kvtwist.auth import Authorizer
from kvtwist.config import (
    BY_NAME,
    CLI,
    REPEATABLE,
    SETTINGS,
    Config,
    ConfigError,
    resolve,
    secret_files,
)
from kvtwist.config_values import etcd_endpoints, etcd_remote_plain_hosts, is_etcd_store
from kvtwist.compactor import Compactor
from kvtwist.errors import KVError
from kvtwist.gcfreeze import FreezeStartupObjects
from kvtwist.events import ChangeHub
from kvtwist.interfaces import IHistoricalStore, IWorkInFlight
from kvtwist.limits import WatcherCount
from kvtwist.listening import listening_service
from kvtwist.metrics import Metrics, TimedStore
from kvtwist.owner import ListeningSockets, Owner, OwnerProbes, Supervisor, WorkerPool
from kvtwist.service import DataLockService, GracefulSignals, StoreService, store_thread_pool
from kvtwist.store.cache import CachedStore
from kvtwist.store.datalock import DataDirectoryBusy
from kvtwist.store.etcd.store import EtcdStore
from kvtwist.store.etcd.tls import EtcdCredentials, EtcdTLS
from kvtwist.store.etcd.transactions import EtcdTransactions
from kvtwist.store.datadir import check_data_dir, hold_data_dir
from kvtwist.store.shelve_store import ShelveStore
from kvtwist.sweeper import Sweeper
from kvtwist.transactions import TransactionManager
from kvtwist.web.http import KVSite
from kvtwist.web.ops import Exposing, Probed, ops_children, ops_root
from kvtwist.web.browsers import BrowserPolicy
from kvtwist.web.root import make_root
from kvtwist.web.ui import make_ui_resource

log = Logger()


def _option_help(setting) -> str:
    default = setting.default
    if setting.name == "listen":
        default = None
    shown = "" if default in (None, False, ()) else " [default: %s]" % (default,)
    return "%s%s [env %s]" % (setting.help, shown, setting.env)


def version_line() -> str:
    """kvtwist's version, with Twisted's and Python's (C{--version}, the startup log)."""
    return "kvtwist %s (Twisted %s, Python %s)" % (
        kvtwist.__version__, twisted.__version__, platform.python_version())


#: C{textwrap} as C{--help} uses it: lines break at spaces only.
_WRAP_AT_SPACES = SimpleNamespace(
    wrap=functools.partial(textwrap.wrap, break_on_hyphens=False, break_long_words=False)
)


def _refuse_token_option() -> None:
    raise usage.UsageError(
        "tokens are never accepted on the command line; "
        "use --token-file or [tokens.NAME] tables in --config"
    )


class Options(usage.Options):
    """
    Options of C{twistd kvcache}: one per L{kvtwist.config.SETTINGS}
    entry (no token options: tokens never go on the command line).

    @param environ: where C{KVCACHE_*} variables are read (default:
        C{os.environ}); tests pass their own.
    @ivar config: the resolved L{kvtwist.config.Config}, after parsing.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve a kvtwist key-value cache over HTTP. By default it listens on "
        "127.0.0.1:8080 and keeps its data in ./kvcache-data. Every option "
        "can also be set in a TOML file (--config, keys spelled like the "
        "options: max-body = 1048576) or as an environment variable "
        "(KVCACHE_MAX_BODY); the command line overrides the environment, "
        "which overrides the file. Tokens are [tokens.NAME] tables in the "
        "config file or in --token-file. See docs/configuration.md."
    )

    optFlags = [
        [s.name, None, _option_help(s)] for s in SETTINGS if s.name == "allow-open"
    ]
    # Defaults are None here so that only what was really given counts as
    # the command line's; the real defaults are applied by resolve().
    optParameters = [
        [s.name, s.short, None, _option_help(s)]
        for s in SETTINGS
        if s.name != "allow-open" and s.name not in REPEATABLE and s.on_argv
    ]

    config: Optional[Config] = None

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        super().__init__()
        # The opt_* docstrings keep their source indentation; --help
        # rewraps each as one paragraph, so it must be one line first (else
        # "use         --etcd-password-file").
        self.docs = {name: " ".join(doc.split()) for name, doc in self.docs.items()}
        self.environ = os.environ if environ is None else environ
        for name in REPEATABLE:
            self[name] = []

    def getUsage(self, width: Optional[int] = None) -> str:
        # Twisted wraps each option's help with textwrap.wrap's defaults,
        # which break after a hyphen and cut option names in two
        # ("--token-" / "file"); wrap at spaces only while it renders.
        wrap = usage.textwrap
        usage.textwrap = _WRAP_AT_SPACES  # type: ignore[assignment]
        try:
            return super().getUsage(width)
        finally:
            usage.textwrap = wrap

    def opt_version(self) -> None:
        """
        Print kvtwist's version (with Twisted's and Python's) and exit.
        """
        # usage.Options' own prints Twisted's version only.
        print(version_line())
        sys.exit(0)

    def opt_ops_listen(self, endpoint: str) -> None:
        self["ops-listen"].append(endpoint)

    opt_ops_listen.__doc__ = _option_help(BY_NAME["ops-listen"])

    def opt_listen(self, endpoint: str) -> None:
        """
        Listen on a Twisted server endpoint string (repeatable), e.g.
        tcp:8080:interface=127.0.0.1, ssl:8443:privateKey=key.pem:certKey=cert.pem,
        unix:/run/kvcache.sock. Replaces --port/--host. [env KVCACHE_LISTEN,
        whitespace-separated]
        """
        self["listen"].append(endpoint)

    def opt_cors_origin(self, origin: str) -> None:
        self["cors-origin"].append(origin)

    opt_cors_origin.__doc__ = _option_help(BY_NAME["cors-origin"])

    def opt_allowed_host(self, host: str) -> None:
        self["allowed-host"].append(host)

    opt_allowed_host.__doc__ = _option_help(BY_NAME["allowed-host"])

    def opt_token(self, value: str) -> None:
        """
        Refused: tokens never go on the command line, which every local
        user can read (use --token-file or [tokens.NAME] in --config).
        """
        # Defined so that "--token SECRET" does not match --token-file as
        # an abbreviation (getopt accepts unique prefixes) and get the
        # secret echoed back as a file name; the value is never shown.
        _refuse_token_option()

    def opt_secret(self, value: str) -> None:
        """Refused, like --token."""
        _refuse_token_option()

    def opt_etcd_password(self, value: str) -> None:
        """
        Refused: the etcd password never goes on the command line; use
        --etcd-password-file, etcd-password in --config, or [env
        KVCACHE_ETCD_PASSWORD].
        """
        # Defined so that it does not match --etcd-password-file as an
        # abbreviation and get the password echoed as a file name.
        raise usage.UsageError(
            "the etcd password is never accepted on the command line; use "
            "--etcd-password-file, etcd-password in --config, or $KVCACHE_ETCD_PASSWORD"
        )

    def given(self) -> Dict[str, Any]:
        """The settings given on the command line, raw."""
        given: Dict[str, Any] = {}
        for setting in SETTINGS:
            value = self.get(setting.name)
            if value is None or value == [] or (setting.name == "allow-open" and not value):
                continue
            given[setting.name] = True if setting.name == "allow-open" else value
        return given

    def postOptions(self) -> None:
        # Kept for the workers (--workers N), which resolve the same
        # settings in their own process.
        self.command_line = self.given()
        try:
            self.config = resolve(self.command_line, self.environ)
        except ConfigError as e:
            if e.layer == CLI:
                raise usage.UsageError(str(e))
            # Not a usage problem: say what is wrong, without the whole
            # --help, and exit non-zero.
            raise SystemExit("kvcache: configuration error: %s" % (e,))
        self.update(self.config.values)
        self["tokens"] = self.config.tokens
        self["endpoints"] = list(self.config.endpoints)

    def endpoints(self) -> List[str]:
        """The endpoint strings to listen on."""
        return list(self["endpoints"])


def open_etcd_store(config: Config, reactor) -> EtcdStore:
    """
    The etcd store C{--store etcd://...} (or C{etcds://...}, over TLS)
    names, with its CA, client certificate and credentials. A TLS file that
    cannot be used ends startup here, in one line naming it.
    """
    spec = config["store"]
    tls = None
    if spec.startswith("etcds://"):
        try:
            tls = EtcdTLS.from_files(config["etcd-ca"], config["etcd-cert"], config["etcd-key"])
        except ValueError as e:
            raise SystemExit("kvcache: cannot start: %s" % (e,))
    credentials = None
    if config.etcd_credentials is not None:
        credentials = EtcdCredentials(*config.etcd_credentials)
        plain = etcd_remote_plain_hosts(spec)
        if plain:
            log.warn(
                "the etcd password and auth token go unencrypted to {hosts}; "
                "use etcds:// (TLS) beyond this machine",
                hosts=", ".join(plain),
            )
    return EtcdStore(
        etcd_endpoints(spec),
        reactor,
        prefix=config["etcd-prefix"],
        tls=tls,
        credentials=credentials,
        max_txn_ops=config["etcd-max-txn-ops"],
        max_request_bytes=config["etcd-max-request-bytes"],
    )


def open_backing_store(config: Config, reactor, metrics: Metrics, parent: MultiService):
    """
    The store C{--store} names, and the thread pool it needs (None for etcd).
    A shelve store's data directory is locked for the life of the process
    (L{kvtwist.store.datalock}); C{parent} gets the lock's Service.

    For shelve, the data directory is opened and checked here, before the
    reactor and the store thread start, so a damaged store ends startup with
    a message and a non-zero exit instead of serving an empty store.
    """
    spec = config["store"]
    if is_etcd_store(spec):
        return open_etcd_store(config, reactor), None
    try:
        # Taken before the check, which writes to the file, and held for
        # the life of the process (the kernel drops it at exit).
        lock = hold_data_dir(config["data"])
        check_data_dir(config["data"])
    except (KVError, DataDirectoryBusy) as e:
        # Damage, a full disk, or another owner: one line, no traceback.
        raise SystemExit("kvcache: cannot start: %s" % (e,))
    DataLockService(lock).setServiceParent(parent)
    pool = store_thread_pool()
    # The preflight above has just run the integrity check.
    shelf = ShelveStore(config["data"], reactor, pool, check_integrity=False)
    shelf.sync_observer = metrics.observe_sync
    shelf.syncs_waited_observer = metrics.observe_syncs_waited
    return shelf, pool


def transaction_manager(backing, timed, store, reactor, limits):
    """
    Where transactions and the seed's queue live: in etcd when the store is
    (every node sees them; they commit through C{timed}, the backing store
    with its commits timed), else in this process (committing through
    C{store}, the whole stack).
    """
    if isinstance(backing, EtcdStore):
        return EtcdTransactions(timed, reactor, limits)
    return TransactionManager(reactor, limits, store)


def web_extras(config: Config) -> Dict[bytes, Any]:
    """The top-level routes beyond the API: the admin page."""
    extras: Dict[bytes, Any] = {}
    if config["ui"] == "on":
        extras[b"ui"] = make_ui_resource()
    return extras


def build_site(config: Config, store, transactions, hub: ChangeHub, metrics: Metrics, reactor, exposition=None) -> KVSite:
    """
    The HTTP site over C{store}: the Resource tree and the connection
    limits, the same in one process and in every worker.

    @param exposition: what C{/v1/metrics} exposes (default: C{metrics});
        a worker passes the owner's view of every process.
    """
    limits = config.limits
    watchers = WatcherCount(limits.max_watchers)
    root = make_root(
        store,
        limits,
        clock=reactor,
        transactions=transactions,
        hub=hub,
        authorizer=Authorizer(config.tokens),
        watchers=watchers,
        extra_children=web_extras(config),
        ops=ops_children(store, exposition or metrics, reactor),
        browsers=BrowserPolicy.of(config["cors-origin"], config["allowed-host"]),
    )
    site = KVSite(
        root,
        limits,
        metrics=metrics,
        access_log=config["access-log"],
        access_log_file=config["access-log-file"],
        reactor=reactor,
    )
    metrics.watch(store=store, watchers=watchers, hub=hub, site=site)
    return site


def worker_pool(config: Config, given: Dict[str, Any], owner: Supervisor, reactor) -> WorkerPool:
    """
    With C{--workers N} (N > 1) this process serves no HTTP: the service
    that binds the listening sockets and runs the N workers serving on
    them (L{kvtwist.owner}), answering them as C{owner}.
    """
    try:
        sockets = ListeningSockets(reactor, config.endpoints, config["workers"])
    except (ValueError, OSError) as e:
        raise SystemExit("kvcache: cannot start: %s" % (e,))
    return WorkerPool(reactor, owner, sockets, given)


def etcd_nodes_service(config: Config, given: Dict[str, Any], reactor) -> MultiService:
    """
    C{--workers N} on etcd: every worker is a node of its own (its own etcd
    client, cache, watch; transactions in etcd), so this process opens no
    store and only binds the sockets, runs the workers and merges their
    metrics.
    """
    top = MultiService()
    GracefulSignals(reactor).setServiceParent(top)
    worker_pool(config, given, Supervisor(Metrics(), config["workers"]), reactor).setServiceParent(top)
    return top


def listen_on(endpoints, site, reactor, parent: MultiService, ui: bool = False) -> None:
    """
    One listening Service under C{parent} per endpoint string, serving
    C{site}, each logging its URL (and with C{ui}, the admin page's) once
    bound. An endpoint that cannot be built (a missing certificate, a bad
    string) ends startup here, in one line.
    """
    for endpoint in endpoints:
        try:
            listener = listening_service(endpoint, site, reactor, ui)
        except Exception as e:
            # Parsing builds TLS contexts, so a missing or unreadable
            # certificate or key ends startup here, in one line.
            raise SystemExit(
                "kvcache: cannot start: bad endpoint %r: %s: %s"
                % (endpoint, type(e).__name__, e)
            )
        listener.setServiceParent(parent)


def makeService(options: Options, reactor=None) -> MultiService:
    """
    Build kvcache: the store Service first (so it stops last, after the
    listeners), then one listening Service per endpoint.

    The data directory is opened and checked here, before the reactor and
    the store thread start, so a damaged store ends startup with a message
    and a non-zero exit instead of serving an empty store; so does an
    endpoint that cannot be built (a missing certificate, a bad string).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    config = options.config
    assert config is not None, "parseOptions() first"
    log.info("kvcache: {version}", version=version_line())
    for path in secret_files(config):
        log.warn(
            "{path} holds tokens and is readable by other users; chmod 600 it",
            path=path,
        )
    if config["workers"] > 1 and is_etcd_store(config["store"]):
        return etcd_nodes_service(config, options.command_line, reactor)
    limits = config.limits
    metrics = Metrics()
    top = MultiService()
    backing, pool = open_backing_store(config, reactor, metrics, top)
    # Commits are timed under the cache, so cached reads pass no wrapper.
    timed = TimedStore(backing, metrics, reactor)
    store = CachedStore(timed, limits.cache_bytes)
    transactions = transaction_manager(backing, timed, store, reactor, limits)
    hub = ChangeHub(store, limits.watch_history, limits.watch_history_bytes)

    GracefulSignals(reactor).setServiceParent(top)
    StoreService(
        store,
        pool,
        reactor,
        stop_timeout=config["stop-timeout"],
        work_in_flight=backing if IWorkInFlight.providedBy(backing) else None,
    ).setServiceParent(top)
    # After the store: stopped before it, so no sweep hits a closed store.
    sweeper = Sweeper(store, reactor, limits)
    sweeper.setServiceParent(top)
    owner = Owner(store, transactions, hub, metrics, config["workers"]) if config["workers"] > 1 else None
    if IHistoricalStore.providedBy(store) and not isinstance(backing, EtcdStore):
        # Compaction runs on the store thread through the store, like the
        # sweeper's commits; stopped before the store too. The owner's
        # workers learn each step's compact revision. Not on etcd: its
        # compaction is cluster-wide (every prefix, every application) and
        # belongs to etcd's own --auto-compaction-* (docs/scale-out.md).
        compacted = owner.feed.publish_state if owner is not None else None
        Compactor(store, reactor, limits, compacted).setServiceParent(top)
    ops_store: Probed
    ops_metrics: Exposing
    if owner is not None:
        # After the store too: the workers stop before it closes.
        worker_pool(config, options.command_line, owner, reactor).setServiceParent(top)
        metrics.watch(store=store, transactions=transactions, hub=hub, sweeper=sweeper)
        # The owner's own probes: ready when every worker is, metrics of all.
        ops_store, ops_metrics = OwnerProbes(owner), OwnerProbes(owner)
    else:
        site = build_site(config, store, transactions, hub, metrics, reactor)
        metrics.watch(transactions=transactions, sweeper=sweeper)
        listen_on(config.endpoints, site, reactor, top, ui=config["ui"] == "on")
        ops_store, ops_metrics = store, metrics
    if config["ops-listen"]:
        # Probes and scrapers that expect /healthz and /metrics at the
        # root get them here, on a listener of their own (the owner's,
        # with workers).
        ops_site = KVSite(
            ops_root(
                ops_store,
                ops_metrics,
                reactor,
                Authorizer(config.tokens),
                BrowserPolicy.of(config["cors-origin"], config["allowed-host"]),
            ),
            config.limits,
            metrics=metrics,
            access_log=config["access-log"],
            access_log_file=config["access-log-file"],
            reactor=reactor,
        )
        listen_on(config["ops-listen"], ops_site, reactor, top)
    log.info(
        "kvcache: auth {auth}; {limits}",
        auth="on (%d tokens)" % len(config.tokens) if config.tokens else "off",
        limits=", ".join("%s=%s" % item for item in sorted(limits.as_dict().items())),
    )
    # Last: once the reactor runs, every object of startup exists.
    FreezeStartupObjects(reactor).setServiceParent(top)
    return top
