# -*- test-case-name: tests.unit.test_config -*-
"""
kvcache's configuration: every setting with its default, read from a TOML
file, C{KVCACHE_*} environment variables and the command line (each one
overriding the one before), plus the bearer tokens and protected mode.

One table, L{SETTINGS}, names every setting once: its long option
(C{--max-body}), its key in the config file (C{max-body}, the same
spelling), its environment variable (C{KVCACHE_MAX_BODY}), its default and
how its value is read. L{kvtwist.tap} builds its twistd options from it and
calls L{resolve}; C{docs/configuration.md} documents it.

Tokens never come from the command line (argv is visible to every local
user): they are C{[tokens.<name>]} tables in the config file or in a token
file (C{--token-file}, C{token-file} in the config, or
C{$KVCACHE_TOKENS_FILE}). Nor does the etcd password: it comes from a file
(C{--etcd-password-file}), the config file or the environment, and is held
as a L{Secret}, which no repr or message shows.

Everything here runs before the reactor starts; a bad setting raises
L{ConfigError} with a message naming the setting and where it came from.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Tuple

from twisted.logger import Logger

from kvtwist.auth import Token
from kvtwist.limits import ETCD_MAX_REQUEST_BYTES, ETCD_MAX_TXN_OPS, HistoryRetention, Limits, MiB
from kvtwist.config_tokens import (
    check_protected,
    check_unique_tokens,
    parse_tokens,
    readable_by_others,
    token_file_tokens,
)
from kvtwist.config_values import (
    CLI,
    DEFAULT,
    ENV,
    FILE,
    ConfigError,
    Secret,
    choice,
    count,
    endpoints,
    flag,
    host_names,
    is_etcd_store,
    origins,
    port,
    read_toml,
    secret_text,
    seconds,
    size,
    store_spec,
    text,
    workers,
)
from kvtwist.servicelinks import is_service_link


log = Logger()

#: The prefix of every environment variable kvcache reads.
ENV_PREFIX = "KVCACHE_"

# -- the settings ----------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """
    One setting.

    @ivar name: the long option and the config-file key (C{max-body}).
    @ivar read: turns a raw value into the setting's value (see above).
    @ivar default: the value when no layer sets it.
    @ivar help: one line for C{--help} and the docs.
    @ivar short: the one-letter option, if any.
    @ivar limit: the L{Limits} field it sets, if it is a limit.
    @ivar in_file: whether the config file may set it.
    @ivar on_argv: whether it has a command-line option (a secret has not:
        every local user can read argv).
    @ivar secret: its value is never shown in a message.
    """

    name: str
    read: Callable[[Any], Any]
    default: Any
    help: str
    short: Optional[str] = None
    limit: Optional[str] = None
    in_file: bool = True
    on_argv: bool = True
    secret: bool = False

    @property
    def env(self) -> str:
        """Its environment variable."""
        if self.name == "token-file":
            # KVCACHE_TOKENS_FILE (the documented name): a file of many tokens.
            return ENV_PREFIX + "TOKENS_FILE"
        return ENV_PREFIX + self.name.upper().replace("-", "_")


_L = Limits()


def _limit(name: str, read: Callable[[Any], Any], help: str) -> Setting:
    field_name = name.replace("-", "_")
    return Setting(name, read, getattr(_L, field_name), help, limit=field_name)


#: Every setting, in the order of C{--help} and the docs.
SETTINGS: Tuple[Setting, ...] = (
    Setting("config", text, None, "TOML config file (keys mirror these options).", in_file=False),
    Setting("port", port, 8080, "TCP port to listen on (with --host).", short="p"),
    Setting("host", text, "127.0.0.1", "Interface for --port (default: loopback only)."),
    Setting(
        "listen",
        endpoints,
        (),
        "Twisted endpoint to listen on, repeatable (tcp:PORT:interface=IP, "
        "ssl:PORT:privateKey=KEY:certKey=CERT, unix:PATH); replaces --port/--host.",
    ),
    Setting(
        "ops-listen",
        endpoints,
        (),
        "Twisted endpoint, repeatable, of a separate operations listener serving "
        "/healthz, /readyz and /metrics at root paths (the API has them under /v1).",
    ),
    Setting("data", text, "./kvcache-data", "Directory of the durable store.", short="d"),
    Setting(
        "store",
        store_spec,
        "shelve",
        "shelve (the embedded store in --data) or etcd://HOST:PORT[,HOST:PORT...].",
    ),
    Setting("etcd-prefix", text, "/kvtwist/", "Key prefix of this kvcache's data in etcd."),
    Setting(
        "etcd-ca",
        text,
        None,
        "PEM file of the CA certificates etcd's must chain to (etcds:// only; "
        "default: the system's).",
    ),
    Setting(
        "etcd-cert",
        text,
        None,
        "PEM client certificate presented to etcd (etcds://, with --etcd-key).",
    ),
    Setting("etcd-key", text, None, "PEM private key (unencrypted) of --etcd-cert."),
    Setting("etcd-user", text, None, "etcd user to authenticate as (with a password)."),
    Setting(
        "etcd-password-file",
        text,
        None,
        "File holding the password of --etcd-user (one line; never the password on argv).",
    ),
    Setting(
        "etcd-password",
        secret_text,
        None,
        "Password of --etcd-user: in the config file or the environment only.",
        on_argv=False,
        secret=True,
    ),
    Setting(
        "etcd-max-txn-ops",
        count,
        ETCD_MAX_TXN_OPS,
        "etcd's --max-txn-ops: keys one commit may touch on etcd (413 beyond).",
    ),
    Setting(
        "etcd-max-request-bytes",
        size,
        ETCD_MAX_REQUEST_BYTES,
        "etcd's --max-request-bytes: the largest commit request sent to etcd (413 beyond).",
    ),
    Setting("ui", choice("on", "off"), "on", "Serve the admin page at /ui/: on or off."),
    Setting("token-file", text, None, "TOML file of [tokens.NAME] tables (never tokens on argv)."),
    Setting(
        "cors-origin",
        origins,
        (),
        "Web origin whose pages may call the API (CORS), repeatable; * for any. "
        "Other pages' requests are refused (403).",
    ),
    Setting(
        "allowed-host",
        host_names,
        (),
        "Host name (or host:port) the server answers to beyond loopback names and IP "
        "addresses, repeatable (421 for others).",
    ),
    Setting(
        "allow-open",
        flag,
        False,
        "Serve beyond loopback with no token configured (protected mode off).",
    ),
    Setting("access-log", choice("off", "clf", "json"), "clf", "Access log format: off, clf or json."),
    Setting("access-log-file", text, None, "Write the access log to this file (default: clf to the twistd log, json lines to stdout)."),
    Setting(
        "workers",
        workers,
        1,
        "Processes serving HTTP: 1 serves from this process alone; N (or auto, one per "
        "core) spawns N workers that share the listening sockets, with this process "
        "owning the store.",
    ),
    Setting(
        "stop-timeout",
        seconds,
        10.0,
        "Seconds a graceful stop (SIGTERM/SIGINT) waits for the store's work in "
        "progress before it is cut short.",
    ),
    _limit("max-body", size, "Largest request body in bytes (413 beyond)."),
    _limit("max-keys-per-request", count, "Keys one request may name (413 beyond)."),
    _limit("max-staged-ops", count, "Ops staged in one queue or transaction (413 beyond)."),
    _limit("max-staged-bytes", size, "Bytes staged in one queue or transaction (413 beyond)."),
    _limit(
        "max-staged-bytes-total",
        size,
        "Bytes staged by every transaction and the shared queue together (503 beyond).",
    ),
    _limit("max-open-transactions", count, "Transactions open at once (429 beyond)."),
    _limit("txn-timeout", seconds, "Seconds an idle transaction lives."),
    _limit("max-leases", count, "Leases held at once (429 beyond)."),
    _limit("max-lease-ttl", seconds, "Longest lease ttl in seconds (400 beyond)."),
    _limit("max-batch-ops", count, "Ops in one POST /v1/batch (413 beyond)."),
    _limit("max-list-limit", count, "Largest page a listing returns."),
    _limit("max-list-bytes", size, "Key and value bytes one listing page reads; the page ends early beyond."),
    _limit("max-watchers", count, "Long-polls and event streams open at once (429 beyond)."),
    _limit("watch-history", count, "Events kept for resuming event streams."),
    _limit("watch-history-bytes", size, "Key and value bytes the kept events may hold."),
    _limit("heartbeat", seconds, "Seconds between event-stream heartbeats."),
    _limit("default-wait", seconds, "Seconds a long-poll waits without ?wait=."),
    _limit("max-wait", seconds, "Longest ?wait= a long-poll may ask for."),
    _limit("watch-buffer", size, "Bytes an event stream may hold unread; a write past it disconnects the stream."),
    _limit("sweep-interval", seconds, "Seconds between expiry sweeps."),
    _limit("sweep-batch", count, "Expired keys removed per sweep commit."),
    Setting(
        "cache-size",
        count,
        _L.cache_bytes // MiB,
        "Read cache bound in MiB (committed values served from memory).",
        limit="cache_bytes",
    ),
    _limit("request-timeout", seconds, "Seconds from a request's first byte to its last (408 beyond)."),
    _limit("idle-timeout", seconds, "Seconds a connection may stay silent (closed beyond)."),
    _limit("max-connections", count, "Connections open at once; more are closed at once."),
    _limit("max-header-bytes", size, "Bytes of request line plus headers (414/431 beyond)."),
    _limit("max-headers", count, "Header lines in one request (431 beyond)."),
    _limit(
        "history-retention",
        HistoryRetention.parse,
        "History kept before automatic compaction: an age (30m, 1h, 7d), a "
        "number of revisions, both (the stricter wins), or forever.",
    ),
)

BY_NAME: Dict[str, Setting] = {setting.name: setting for setting in SETTINGS}
BY_ENV: Dict[str, Setting] = {setting.env: setting for setting in SETTINGS}
#: The old spelling of the token-file variable is accepted too.
BY_ENV[ENV_PREFIX + "TOKEN_FILE"] = BY_NAME["token-file"]

#: The settings that may be given several times on the command line.
REPEATABLE = ("listen", "ops-listen", "cors-origin", "allowed-host")

#: Keys of a C{[tokens.<name>]} table.
# -- the result ------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """
    The configuration in force.

    @ivar values: every setting's final value, by name.
    @ivar sources: where each non-default value came from (a file path,
        C{$VARIABLE} or C{--option}), for messages.
    """

    values: Mapping[str, Any]
    tokens: Tuple[Token, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def endpoints(self) -> Tuple[str, ...]:
        """The endpoint strings to listen on."""
        return listen_endpoints(self.values, self.sources)

    @property
    def etcd_credentials(self) -> Optional[Tuple[str, str]]:
        """The etcd user and password, when both are set."""
        password = self.values.get("etcd-password")
        user = self.values.get("etcd-user")
        if user is None or password is None:
            return None
        return user, password.value

    @property
    def limits(self) -> Limits:
        """The L{Limits} these settings make."""
        fields = {}
        for setting in SETTINGS:
            if setting.limit is None:
                continue
            value = self.values[setting.name]
            if setting.name == "cache-size":
                value *= MiB
            fields[setting.limit] = value
        if is_etcd_store(self.values["store"]):
            # etcd's own caps on one commit, reported with kvtwist's.
            fields["etcd_max_txn_ops"] = self.values["etcd-max-txn-ops"]
            fields["etcd_max_request_bytes"] = self.values["etcd-max-request-bytes"]
        return Limits(**fields)


def listen_endpoints(values: Mapping[str, Any], sources: Mapping[str, str]) -> Tuple[str, ...]:
    """
    The endpoints: C{listen} if it is set, else C{tcp:PORT:interface=HOST}.
    L{resolve} has already refused C{--port}/C{--host} set at a higher
    precedence than C{listen}.
    """
    if values["listen"]:
        return tuple(values["listen"])
    host = values["host"].replace(":", "\\:")
    return ("tcp:%d:interface=%s" % (values["port"], host),)


# -- reading the layers --------------------------------------------------------


def _describe(layer: int, setting: Setting, path: Optional[str]) -> str:
    if layer == FILE:
        return "%s: key %r" % (path, setting.name)
    if layer == ENV:
        return "environment variable %s" % (setting.env,)
    return "option --%s" % (setting.name,)


def _read_value(setting: Setting, raw: Any, layer: int, path: Optional[str]) -> Any:
    try:
        return setting.read(raw)
    except ValueError as e:
        shown = "" if setting.secret else " (got %r)" % (raw,)
        raise ConfigError(
            "%s %s%s" % (_describe(layer, setting, path), e, shown), layer
        ) from None


def _suggest(name: str) -> str:
    """
    A "did you mean" for an unknown config-file key: the setting spelled
    with dashes (C{max_body}), else the closest setting name by difflib
    (C{max-bdy}), if one is close enough.
    """
    spelled = name.replace("_", "-").lower()
    if spelled in BY_NAME and spelled != name:
        return " (did you mean %r?)" % (spelled,)
    close = difflib.get_close_matches(
        spelled, [s.name for s in SETTINGS if s.in_file], n=1, cutoff=0.75
    )
    return " (did you mean %r?)" % (close[0],) if close else ""


def file_layer(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """
    The settings and the raw C{tokens} table of the config file at C{path}.

    @raise ConfigError: naming the key and the file, for an unknown key or
        a bad value.
    """
    document = read_toml(path, "config file")
    values: Dict[str, Any] = {}
    tokens: Dict[str, Any] = {}
    for key, raw in document.items():
        if key == "tokens":
            if not isinstance(raw, dict):
                raise ConfigError("%s: 'tokens' must be a table of [tokens.NAME] tables" % (path,), FILE)
            tokens = raw
            continue
        setting = BY_NAME.get(key)
        if setting is None or not setting.in_file:
            raise ConfigError(
                "%s: unknown key %r%s" % (path, key, _suggest(key) if setting is None else ""),
                FILE,
            )
        if isinstance(raw, str) and setting.read is endpoints:
            # Only the environment has to pack several into one string.
            raise ConfigError(
                "%s: key %r must be a list of endpoint strings (got %r)" % (path, key, raw), FILE
            )
        values[key] = _read_value(setting, raw, FILE, path)
    return values, tokens


def env_layer(
    environ: Mapping[str, str], overridden: Collection[str] = ()
) -> Dict[str, Any]:
    """
    The settings given as C{KVCACHE_*} environment variables.

    Kubernetes' service links (L{kvtwist.servicelinks}) are skipped with a
    debug line. A variable whose setting is in C{overridden} (given on the
    command line) is not read at all: the command line wins, so a stale or
    foreign value there cannot stop startup.

    @raise ConfigError: for an unknown C{KVCACHE_} variable (a typo would
        otherwise be silently ignored) or a bad value.
    """
    values: Dict[str, Any] = {}
    links: List[str] = []
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX):
            continue
        if is_service_link(variable, environ[variable]):
            links.append(variable)
            continue
        setting = BY_ENV.get(variable)
        if setting is None:
            raise ConfigError("unknown environment variable %s" % (variable,), ENV)
        if setting.name in overridden:
            continue
        value = _read_value(setting, environ[variable], ENV, None)
        if setting.name in values and values[setting.name] != value:
            raise ConfigError(
                "%s and %s disagree; set one of them"
                % (setting.env, ENV_PREFIX + "TOKEN_FILE"),
                ENV,
            )
        values[setting.name] = value
    if links:
        log.debug(
            "ignoring Kubernetes service links (not kvcache settings): {variables}",
            variables=" ".join(links),
        )
    return values


def cli_layer(given: Mapping[str, Any]) -> Dict[str, Any]:
    """The settings given on the command line (raw strings, or lists for C{listen})."""
    values: Dict[str, Any] = {}
    for name, raw in given.items():
        setting = BY_NAME[name]
        values[name] = _read_value(setting, raw, CLI, None)
    return values


# -- putting it together -----------------------------------------------------------


def resolve(cli: Mapping[str, Any], environ: Mapping[str, str]) -> Config:
    """
    The configuration from the defaults, the config file, the environment
    and the command line, each overriding the one before.

    @param cli: the options given on the command line, by setting name,
        as raw strings (a list for C{listen}); absent when not given.
    @param environ: the environment (C{KVCACHE_*} variables are read).
    @raise ConfigError: for anything unknown, malformed or contradictory.
    """
    command = cli_layer(cli)
    env = env_layer(environ, overridden=command)
    config_path: Optional[str] = command.get("config", env.get("config"))
    file_values: Dict[str, Any] = {}
    file_tokens: Dict[str, Any] = {}
    if config_path is not None:
        file_values, file_tokens = file_layer(config_path)

    layers = [(FILE, file_values), (ENV, env), (CLI, command)]
    values = {setting.name: setting.default for setting in SETTINGS}
    sources: Dict[str, str] = {}
    origin: Dict[str, int] = {}
    for layer, settings in layers:
        for name, value in settings.items():
            values[name] = value
            origin[name] = layer
            if layer == ENV:
                sources[name] = BY_NAME[name].env
            elif layer == CLI:
                sources[name] = "--" + name
            elif config_path is not None:
                # The file layer, which has settings only with a file.
                sources[name] = config_path
    values["listen"] = tuple(values["listen"])
    values["ops-listen"] = tuple(values["ops-listen"])

    # listen replaces --port/--host, unless those were set with a higher
    # precedence (e.g. --port on the command line over a file's listen).
    if values["listen"]:
        address_layer = max(origin.get("port", DEFAULT), origin.get("host", DEFAULT))
        if address_layer > origin["listen"]:
            values["listen"] = ()

    tokens: List[Token] = []
    if config_path is not None:
        tokens.extend(parse_tokens(file_tokens, config_path))
    if values["token-file"] is not None:
        tokens.extend(token_file_tokens(values["token-file"]))
    check_unique_tokens(tokens)

    _resolve_etcd(values, origin, config_path)

    config = Config(values, tuple(tokens), sources)
    check_protected(
        config.endpoints + values["ops-listen"], config.tokens, values["allow-open"]
    )
    return config


#: The settings of TLS and authentication towards etcd.
ETCD_TLS_SETTINGS = ("etcd-ca", "etcd-cert", "etcd-key")
ETCD_AUTH_SETTINGS = ("etcd-user", "etcd-password", "etcd-password-file")
#: etcd's limits on one request, which kvtwist must be told when raised.
ETCD_LIMIT_SETTINGS = ("etcd-max-txn-ops", "etcd-max-request-bytes")


def _resolve_etcd(values: Dict[str, Any], origin: Mapping[str, int], path: Optional[str]) -> None:
    """
    Check the etcd TLS and auth settings against the store and each other,
    and put the password (read from its file, if it comes from one) in
    C{values["etcd-password"]}.

    @raise ConfigError: naming the setting and where it came from.
    """

    def where(name: str) -> str:
        return _describe(origin.get(name, DEFAULT), BY_NAME[name], path)

    def refuse(name: str, message: str) -> None:
        raise ConfigError("%s %s" % (where(name), message), origin.get(name, DEFAULT))

    spec = values["store"]
    given = [n for n in ETCD_TLS_SETTINGS + ETCD_AUTH_SETTINGS if values[n] is not None]
    given += [n for n in ETCD_LIMIT_SETTINGS if origin.get(n, DEFAULT) != DEFAULT]
    if not is_etcd_store(spec):
        for name in given:
            refuse(
                name,
                "applies only to an etcd store (store etcd://HOST:PORT,... or "
                "etcds://HOST:PORT,...); the store is %r" % (spec,),
            )
        return
    for name in ETCD_TLS_SETTINGS:
        if values[name] is not None and not spec.startswith("etcds://"):
            refuse(
                name,
                "needs TLS towards etcd: write the store as etcds://%s (it is %r)"
                % (spec[len("etcd://"):], spec),
            )
    for name, other in (("etcd-cert", "etcd-key"), ("etcd-key", "etcd-cert")):
        if values[name] is not None and values[other] is None:
            refuse(name, "needs %s too (a client certificate and its private key)" % (other,))

    password, password_file = values["etcd-password"], values["etcd-password-file"]
    if password is not None and password_file is not None:
        # The higher layer wins, as for any setting; one layer must not say both.
        if origin["etcd-password"] == origin["etcd-password-file"]:
            refuse("etcd-password", "and etcd-password-file are both set; keep one")
        if origin["etcd-password"] > origin["etcd-password-file"]:
            password_file = values["etcd-password-file"] = None
        else:
            password = None
    if password_file is not None:
        password = read_password_file(password_file)
    values["etcd-password"] = password
    if values["etcd-user"] is not None and password is None:
        refuse(
            "etcd-user",
            "needs a password: etcd-password-file, or etcd-password in the config "
            "file or %sETCD_PASSWORD" % (ENV_PREFIX,),
        )
    if password is not None and values["etcd-user"] is None:
        name = "etcd-password-file" if password_file is not None else "etcd-password"
        refuse(name, "gives a password but no etcd-user")


def read_password_file(path: str) -> Secret:
    """
    The password in the file at C{path}: its one line, without the line
    end (so C{echo pw > file} works); spaces are part of the password.

    @raise ConfigError: naming the file (never showing its content).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(
            "cannot read the etcd password file %s: %s" % (path, e.strerror or e), FILE
        )
    try:
        password = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("the etcd password file %s is not UTF-8 text" % (path,), FILE)
    for end in ("\r\n", "\n"):
        if password.endswith(end):
            password = password[: -len(end)]
            break
    if not password:
        raise ConfigError("the etcd password file %s is empty" % (path,), FILE)
    if "\n" in password or "\r" in password:
        raise ConfigError(
            "the etcd password file %s must hold the password on one line" % (path,), FILE
        )
    return Secret(password)


def secret_files(config: Config) -> List[str]:
    """
    The files holding secrets that other users can read (for a warning):
    the config file when it defines tokens or the etcd password, the token
    file, the etcd password file and the etcd client key.
    """
    found = []
    path = config["config"]
    holds_password = config.sources.get("etcd-password") == path
    if path is not None and (config.tokens or holds_password) and readable_by_others(path):
        found.append(path)
    for name in ("token-file", "etcd-password-file", "etcd-key"):
        other = config[name]
        if other is not None and readable_by_others(other):
            found.append(other)
    return found
