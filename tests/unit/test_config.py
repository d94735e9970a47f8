"""
Configuration (docs/configuration.md): the options of
C{twistd kvcache}, the TOML config file, C{KVCACHE_*} environment variables
and their precedence, tokens and token files, protected mode, and how
L{kvtwist.tap.makeService} turns all of it into listeners, limits and auth.

Option parsing is checked by comparing the whole parsed result (as
magic-wormhole-mailbox-server's C{test_config.py} does), so a new option or
a changed default shows up here. Everything runs in memory except the files
written to a temporary directory and one real C{twistd} start that must
fail.

One module though long: every test compares whole parsed configurations
built by the same helpers, and the settings table it pins is one table.
"""

from __future__ import annotations

import os
import re
import textwrap

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.auth import Token
from kvtwist.config import REPEATABLE, SETTINGS, ConfigError, resolve, secret_files
from kvtwist.config_tokens import is_local_endpoint
from kvtwist.config_values import Secret, count, port, seconds, size
from kvtwist.limits import Limits, MiB
from kvtwist.tap import Options, makeService
from kvtwist.limits import HistoryRetention
from kvtwist.web.http import KVSite
from tests.helpers.e2e import ServerProcess, http_request, run_twistd, temp_dir
from tests.helpers.paths import REPO

#: Every parsed option with its default: the whole result of parsing no
#: arguments with an empty environment.
DEFAULTS = {
    "config": None,
    "port": 8080,
    "host": "127.0.0.1",
    "listen": (),
    "ops-listen": (),
    "data": "./kvcache-data",
    "store": "shelve",
    "etcd-prefix": "/kvtwist/",
    "etcd-ca": None,
    "etcd-cert": None,
    "etcd-key": None,
    "etcd-user": None,
    "etcd-password-file": None,
    "etcd-password": None,
    "etcd-max-txn-ops": 128,
    "etcd-max-request-bytes": 1572864,
    "ui": "on",
    "token-file": None,
    "cors-origin": (),
    "allowed-host": (),
    "allow-open": False,
    "access-log": "clf",
    "access-log-file": None,
    "workers": 1,
    "stop-timeout": 10.0,
    "max-body": 1048576,
    "max-keys-per-request": 100000,
    "max-staged-ops": 100000,
    "max-staged-bytes": 67108864,
    "max-staged-bytes-total": 536870912,
    "max-open-transactions": 1000,
    "max-leases": 10000,
    "max-lease-ttl": 86400.0,
    "txn-timeout": 300.0,
    "max-batch-ops": 100000,
    "max-list-limit": 1000,
    "max-list-bytes": 4194304,
    "max-watchers": 1000,
    "watch-history": 10000,
    "watch-history-bytes": 33554432,
    "heartbeat": 15.0,
    "default-wait": 60.0,
    "max-wait": 600.0,
    "watch-buffer": 1048576,
    "sweep-interval": 1.0,
    "sweep-batch": 1000,
    "cache-size": 64,
    "request-timeout": 10.0,
    "idle-timeout": 60.0,
    "max-connections": 1024,
    "max-header-bytes": 16384,
    "max-headers": 100,
    "history-retention": HistoryRetention(1_000_000, 3600.0),
    "tokens": (),
    "endpoints": ["tcp:8080:interface=127.0.0.1"],
}

SECRET_A = "a" * 8 + "-secret-A-0123"
SECRET_B = "b" * 8 + "-secret-B-4567"


def parse(argv=(), environ=None) -> Options:
    """Parse C{argv} with C{environ} (empty by default) and return the options."""
    options = Options(environ=environ if environ is not None else {})
    options.parseOptions(list(argv))
    return options


def expected(**changes) -> dict:
    """L{DEFAULTS} with C{changes} (underscores in names become dashes)."""
    result = dict(DEFAULTS)
    for name, value in changes.items():
        result[name.replace("_", "-")] = value
    return result


class FileMixin:
    """Writes files into a temporary directory of the test."""

    def write(self, name: str, text: str, mode: int = 0o600) -> str:
        """Write C{text} (dedented) to C{name} and return its path."""
        base = getattr(self, "_base", None)
        if base is None:
            base = self._base = temp_dir(self, "config")
        path = os.path.join(base, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
        os.chmod(path, mode)
        return path


class DefaultsAndCommandLineTests(SynchronousTestCase):
    """The options with nothing set, and set on the command line."""

    def test_defaults(self):
        """With no argument and no environment every option has its documented default."""
        self.assertEqual(parse(), DEFAULTS)

    def test_workers(self):
        """--workers takes a count, or auto for the machine's cores; 0 and words are usage errors."""
        self.assertEqual(parse(["--workers", "3"]), expected(workers=3))
        self.assertEqual(parse(["--workers", "auto"])["workers"], os.cpu_count())
        for bad in ("0", "-1", "many"):
            with self.assertRaises(usage.UsageError):
                parse(["--workers", bad])

    def test_every_setting_is_in_defaults(self):
        """The pinned defaults above name every setting there is (so none is undocumented here)."""
        self.assertEqual(
            {s.name for s in SETTINGS} | {"tokens", "endpoints"}, set(DEFAULTS)
        )

    def test_command_line_sets_every_kind(self):
        """Each kind of value is read from the command line: ints, sizes with units, seconds, choices, flags."""
        options = parse(
            [
                "--port", "9000",
                "--data", "/srv/kv",
                "--max-body", "64KiB",
                "--txn-timeout", "2.5",
                "--access-log", "json",
                "--max-connections", "7",
                "--cache-size", "8",
                "--request-timeout", "3",
                "--allow-open",
            ]
        )
        self.assertEqual(
            options,
            expected(
                port=9000,
                data="/srv/kv",
                max_body=65536,
                txn_timeout=2.5,
                access_log="json",
                max_connections=7,
                cache_size=8,
                request_timeout=3.0,
                allow_open=True,
                endpoints=["tcp:9000:interface=127.0.0.1"],
            ),
        )

    def test_every_limit_on_the_command_line(self):
        """Every limit has an option, and the option reaches L{Limits} (cache-size in MiB)."""
        argv = []
        changes = {}
        numeric = [s for s in SETTINGS if s.limit and s.name != "history-retention"]
        for index, setting in enumerate(numeric):
            value = DEFAULTS[setting.name] + index + 1
            argv += ["--" + setting.name, str(value)]
            changes[setting.name] = type(DEFAULTS[setting.name])(value)
        options = parse(argv)
        self.assertEqual(options, dict(DEFAULTS, **changes))
        limits = options.config.limits
        for setting in numeric:
            scale = MiB if setting.name == "cache-size" else 1
            self.assertEqual(getattr(limits, setting.limit), changes[setting.name] * scale)

    def test_history_retention(self):
        """
        --history-retention takes an age, a number of revisions, both, or
        forever, from every layer, and reaches L{Limits}; anything else is
        refused naming the option.
        """
        options = parse(["--history-retention", "30m,500"])
        self.assertEqual(options, expected(history_retention=HistoryRetention(500, 1800.0)))
        self.assertEqual(options.config.limits.history_retention, HistoryRetention(500, 1800.0))
        self.assertEqual(
            parse(environ={"KVCACHE_HISTORY_RETENTION": "forever"})["history-retention"],
            HistoryRetention(None, None),
        )
        path = os.path.join(temp_dir(self), "kv.toml")
        with open(path, "w") as f:
            f.write("history-retention = 100000\n")
        self.assertEqual(
            parse(["--config", path])["history-retention"], HistoryRetention(100000, None)
        )
        for bad in ("", "1y", "0", "1h,2h", "-5"):
            error = self.assertRaises(usage.UsageError, parse, ["--history-retention", bad])
            self.assertIn("history-retention", str(error))

    def test_listen_repeatable(self):
        """--listen may be given several times; it replaces --port/--host."""
        options = parse(
            ["--listen", "tcp:1:interface=127.0.0.1", "--listen", "unix:/tmp/kv.sock"]
        )
        endpoints = ["tcp:1:interface=127.0.0.1", "unix:/tmp/kv.sock"]
        self.assertEqual(options, expected(listen=tuple(endpoints), endpoints=endpoints))

    def test_ops_listen_repeatable(self):
        """--ops-listen may be given several times, and does not replace the API's listener."""
        endpoints = ("tcp:1:interface=127.0.0.1", "unix:/tmp/ops.sock")
        options = parse(["--ops-listen", endpoints[0], "--ops-listen", endpoints[1]])
        self.assertEqual(options, expected(ops_listen=endpoints))

    def test_ipv6_host_is_escaped(self):
        """An IPv6 --host has its colons escaped in the endpoint string."""
        self.assertEqual(parse(["--host", "::1"])["endpoints"], ["tcp:8080:interface=\\:\\:1"])

    def test_bad_command_line_value_is_a_usage_error(self):
        """A bad value on the command line is a usage error naming the option."""
        for argv, word in [
            (["--port", "0"], "--port"),
            (["--port", "http"], "--port"),
            (["--max-body", "-5"], "--max-body"),
            (["--max-body", "12 parsecs"], "--max-body"),
            (["--txn-timeout", "nan"], "--txn-timeout"),
            (["--access-log", "verbose"], "--access-log"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                parse(argv)
            self.assertIn(word, str(caught.exception))

    def test_no_token_option(self):
        """
        Tokens cannot be given on the command line (argv is public), not
        even as an abbreviation of --token-file, and the refusal never
        echoes the value.
        """
        for option in ("--token", "--tok", "--secret"):
            with self.assertRaises(usage.UsageError) as caught:
                parse([option, SECRET_A])
            self.assertNotIn(SECRET_A, str(caught.exception))

    def test_help_lists_every_option_with_its_variable(self):
        """--help names every option and its environment variable."""
        text = str(Options(environ={}))
        for setting in SETTINGS:
            self.assertIn("--" + setting.name, text)
            if setting.name != "listen":
                self.assertIn(setting.env, text)


class ConfigFileTests(FileMixin, SynchronousTestCase):
    """The TOML file given with --config (or $KVCACHE_CONFIG)."""

    def test_file_sets_values(self):
        """Keys spelled like the long options set the settings."""
        path = self.write(
            "kv.toml",
            """
            port = 9001
            data = "/var/lib/kv"
            max-body = "2MiB"
            heartbeat = 5
            max-wait = 30.5
            access-log = "off"
            """,
        )
        self.assertEqual(
            parse(["--config", path]),
            expected(
                config=path,
                port=9001,
                data="/var/lib/kv",
                max_body=2 * MiB,
                heartbeat=5.0,
                max_wait=30.5,
                access_log="off",
                endpoints=["tcp:9001:interface=127.0.0.1"],
            ),
        )

    def test_workers_in_file(self):
        """workers = "auto" or a count in the config file sets --workers."""
        self.assertEqual(parse(["--config", self.write("kv.toml", "workers = 2\n")])["workers"], 2)
        path = self.write("auto.toml", 'workers = "auto"\n')
        self.assertEqual(parse(["--config", path])["workers"], os.cpu_count())

    def test_config_from_environment(self):
        """$KVCACHE_CONFIG names the file when --config does not."""
        path = self.write("kv.toml", "port = 9002\n")
        options = parse(environ={"KVCACHE_CONFIG": path})
        self.assertEqual(options["port"], 9002)
        self.assertEqual(options["config"], path)

    def assertConfigError(self, argv, environ=None, *needles):
        """Parsing stops the process with a message holding every needle."""
        with self.assertRaises(SystemExit) as caught:
            parse(argv, environ)
        message = str(caught.exception.code)
        self.assertTrue(message.startswith("kvcache: configuration error: "), message)
        for needle in needles:
            self.assertIn(needle, message)
        return message

    def test_unknown_key_names_key_and_file(self):
        """An unknown key stops startup with a message naming the key and the file."""
        path = self.write("kv.toml", "port = 9000\nmax-bodyy = 5\n")
        self.assertConfigError(["--config", path], None, path, "'max-bodyy'", "unknown key")

    def test_typo_gets_the_closest_key(self):
        """A misspelt key (max-bdy) gets the closest setting as a "did you mean"; a far one gets none."""
        path = self.write("kv.toml", "max-bdy = 5\n")
        self.assertConfigError(["--config", path], None, "'max-bdy'", "did you mean 'max-body'")
        path = self.write("kv.toml", "zzz = 5\n")
        message = self.assertConfigError(["--config", path], None, "'zzz'")
        self.assertNotIn("did you mean", message)

    def test_underscore_spelling_is_unknown_with_a_hint(self):
        """Keys use dashes, like the options; max_body is unknown and the message suggests max-body."""
        path = self.write("kv.toml", "max_body = 5\n")
        self.assertConfigError(["--config", path], None, "'max_body'", "did you mean 'max-body'")

    def test_bad_values_name_key_and_file(self):
        """A value of the wrong type or range stops startup naming the key and the file."""
        for text, key in [
            ('port = "eighty"', "port"),
            ("port = 70000", "port"),
            ("max-body = -1", "max-body"),
            ("max-body = true", "max-body"),
            ("txn-timeout = 0", "txn-timeout"),
            ("txn-timeout = inf", "txn-timeout"),
            ('access-log = "loud"', "access-log"),
            ('listen = "tcp:1"', "listen"),
            ("listen = []", "listen"),
            ("allow-open = 1", "allow-open"),
            ('data = ""', "data"),
        ]:
            path = self.write("bad.toml", text + "\n")
            self.assertConfigError(["--config", path], None, path, repr(key))

    def test_config_key_not_allowed_in_file(self):
        """A config file cannot name another config file."""
        path = self.write("kv.toml", 'config = "other.toml"\n')
        self.assertConfigError(["--config", path], None, "'config'")

    def test_not_toml(self):
        """A file that is not TOML is refused with its path."""
        path = self.write("kv.toml", "port = = 1\n")
        self.assertConfigError(["--config", path], None, path, "not valid TOML")

    def test_missing_file(self):
        """A config file that cannot be read is refused with its path."""
        path = os.path.join(temp_dir(self), "absent.toml")
        self.assertConfigError(["--config", path], None, path, "cannot read")


class BrowserOptionTests(FileMixin, SynchronousTestCase):
    """--cors-origin and --allowed-host: repeatable, lists in the file, words in the environment."""

    def test_repeated_on_the_command_line(self):
        """Each repetition adds one; values are lower-cased; the rest stays default."""
        options = parse(
            [
                "--cors-origin", "https://App.example",
                "--cors-origin", "http://localhost:3000",
                "--allowed-host", "KV.example",
                "--allowed-host", "kv.example:8080",
            ]
        )
        self.assertEqual(
            options,
            expected(
                cors_origin=("https://app.example", "http://localhost:3000"),
                allowed_host=("kv.example", "kv.example:8080"),
                endpoints=["tcp:8080:interface=127.0.0.1"],
            ),
        )

    def test_file_lists_and_environment_words(self):
        """The file takes TOML lists, the environment whitespace-separated words; the environment wins."""
        path = self.write(
            "kv.toml",
            """
            cors-origin = ["https://a.example", "*"]
            allowed-host = ["kv.example"]
            """,
        )
        options = parse(["--config", path])
        self.assertEqual(options["cors-origin"], ("https://a.example", "*"))
        self.assertEqual(options["allowed-host"], ("kv.example",))
        options = parse(
            ["--config", path],
            environ={"KVCACHE_ALLOWED_HOST": "a.example b.example:81"},
        )
        self.assertEqual(options["allowed-host"], ("a.example", "b.example:81"))

    def test_bad_values(self):
        """An origin with a path, another scheme or no scheme, or a host with a path, is a usage error."""
        for argv in (
            ["--cors-origin", "https://a.example/"],
            ["--cors-origin", "ftp://a.example"],
            ["--cors-origin", "a.example"],
            ["--cors-origin", "null"],
            ["--allowed-host", "kv.example/x"],
            ["--allowed-host", "http://kv.example"],
        ):
            with self.assertRaises(usage.UsageError, msg=argv):
                parse(argv)


class PrecedenceTests(FileMixin, SynchronousTestCase):
    """Defaults < config file < environment < command line."""

    def test_each_layer_overrides_the_one_below(self):
        """A setting in every layer takes the command line's value; one in file and env, the env's; the file alone, the file's."""
        path = self.write(
            "kv.toml",
            """
            max-body = 1000
            max-watchers = 11
            sweep-batch = 12
            """,
        )
        environ = {"KVCACHE_MAX_BODY": "2000", "KVCACHE_MAX_WATCHERS": "21"}
        options = parse(["--config", path, "--max-body", "3000"], environ)
        self.assertEqual(
            options,
            expected(config=path, max_body=3000, max_watchers=21, sweep_batch=12),
        )
        self.assertEqual(
            options.config.sources,
            {
                "config": "--config",
                "max-body": "--max-body",
                "max-watchers": "KVCACHE_MAX_WATCHERS",
                "sweep-batch": path,
            },
        )

    def test_environment_values(self):
        """Environment variables are read like the command line: sizes, seconds, flags, endpoint lists."""
        options = parse(
            environ={
                "KVCACHE_WATCH_BUFFER": "1KiB",
                "KVCACHE_HEARTBEAT": "0.5",
                "KVCACHE_ALLOW_OPEN": "yes",
                "KVCACHE_LISTEN": "tcp:1:interface=127.0.0.1  unix:/tmp/kv.sock",
                "OTHER": "ignored",
            }
        )
        endpoints = ["tcp:1:interface=127.0.0.1", "unix:/tmp/kv.sock"]
        self.assertEqual(
            options,
            expected(
                watch_buffer=1024,
                heartbeat=0.5,
                allow_open=True,
                listen=tuple(endpoints),
                endpoints=endpoints,
            ),
        )

    def test_bad_environment_value_names_the_variable(self):
        """A bad value in the environment stops startup naming the variable."""
        with self.assertRaises(SystemExit) as caught:
            parse(environ={"KVCACHE_MAX_HEADERS": "many"})
        self.assertIn("KVCACHE_MAX_HEADERS", str(caught.exception.code))

    def test_unknown_environment_variable(self):
        """An unknown KVCACHE_ variable stops startup (a typo must not be silently ignored)."""
        with self.assertRaises(SystemExit) as caught:
            parse(environ={"KVCACHE_MAX_BDY": "5"})
        self.assertIn("KVCACHE_MAX_BDY", str(caught.exception.code))

    def test_port_on_command_line_beats_listen_in_file(self):
        """--port on the command line replaces a listen list from the file."""
        path = self.write("kv.toml", 'listen = ["unix:/tmp/a.sock"]\nhost = "127.0.0.2"\n')
        options = parse(["--config", path, "--port", "9100"])
        self.assertEqual(
            options,
            expected(
                config=path, port=9100, host="127.0.0.2", endpoints=["tcp:9100:interface=127.0.0.2"]
            ),
        )

    def test_listen_beats_port_in_same_layer(self):
        """In one layer, listen replaces port and host."""
        path = self.write("kv.toml", 'listen = ["unix:/tmp/a.sock"]\nport = 9000\n')
        options = parse(["--config", path])
        self.assertEqual(options["endpoints"], ["unix:/tmp/a.sock"])

    def test_listen_on_command_line_beats_port_in_file(self):
        """--listen on the command line replaces a port from the file."""
        path = self.write("kv.toml", "port = 9000\n")
        options = parse(["--config", path, "--listen", "unix:/tmp/b.sock"])
        self.assertEqual(options["endpoints"], ["unix:/tmp/b.sock"])


#: What Kubernetes injects for a Service named C{kvcache} with a port
#: named C{http}, and for a second Service named C{kvcache-headless}.
SERVICE_LINKS = {
    "KVCACHE_SERVICE_HOST": "10.96.0.12",
    "KVCACHE_SERVICE_PORT": "8080",
    "KVCACHE_SERVICE_PORT_HTTP": "8080",
    "KVCACHE_PORT": "tcp://10.96.0.12:8080",
    "KVCACHE_PORT_8080_TCP": "tcp://10.96.0.12:8080",
    "KVCACHE_PORT_8080_TCP_PROTO": "tcp",
    "KVCACHE_PORT_8080_TCP_PORT": "8080",
    "KVCACHE_PORT_8080_TCP_ADDR": "10.96.0.12",
    "KVCACHE_HEADLESS_SERVICE_HOST": "10.96.0.13",
    "KVCACHE_HEADLESS_PORT": "udp://[fd00::13]:53",
    "KVCACHE_HEADLESS_PORT_53_UDP_ADDR": "fd00::13",
}


class ServiceLinkTests(SynchronousTestCase):
    """Kubernetes' service-link variables never stop startup or change a setting."""

    def test_service_links_change_nothing(self):
        """With every service-link variable set, the parsed options are the defaults."""
        self.assertEqual(parse(environ=SERVICE_LINKS), DEFAULTS)

    def test_service_links_with_settings(self):
        """Real KVCACHE_ settings next to service links are read; the links are not."""
        environ = dict(SERVICE_LINKS, KVCACHE_MAX_BODY="2KiB")
        self.assertEqual(
            parse(["--port", "9000"], environ),
            expected(max_body=2048, port=9000, endpoints=["tcp:9000:interface=127.0.0.1"]),
        )

    def test_port_setting_still_read(self):
        """KVCACHE_PORT holding a port number (not a tcp:// link) is still the port setting."""
        self.assertEqual(
            parse(environ={"KVCACHE_PORT": "9001"}),
            expected(port=9001, endpoints=["tcp:9001:interface=127.0.0.1"]),
        )

    def test_link_shaped_names_only(self):
        """A variable that merely resembles a link (KVCACHE_PORT_X) is still an unknown variable."""
        with self.assertRaises(SystemExit) as caught:
            parse(environ={"KVCACHE_PORT_8080_HTTP": "8080"})
        self.assertIn("KVCACHE_PORT_8080_HTTP", str(caught.exception.code))

    def test_command_line_wins_over_a_bad_environment_value(self):
        """For every setting given on the command line, its variable is not read: even a bad value there is overridden, not an error."""
        # These need a file to read or an etcd store; their layers are
        # pinned with those features.
        skipped = {"config", "token-file", "allow-open"}
        valid = {count: "9", port: "9", size: "9", seconds: "9"}
        special = {
            "ui": "off", "access-log": "off", "listen": "unix:/tmp/kv.sock",
            "ops-listen": "unix:/tmp/kv-ops.sock",
            "store": "shelve", "host": "127.0.0.2",
            "cors-origin": "https://app.example", "allowed-host": "kv.example",
            "history-retention": "1h",
            "workers": "2",
        }
        for setting in SETTINGS:
            if not setting.on_argv or setting.name in skipped or setting.name.startswith("etcd-"):
                continue
            given = special.get(setting.name, valid.get(setting.read, "/tmp/kv-cli"))
            # A blank value is bad for every kind of setting.
            options = parse(["--" + setting.name, given], {setting.env: " "})
            self.assertEqual(options.config.sources[setting.name], "--" + setting.name)
            self.assertEqual(
                options.config[setting.name],
                setting.read([given] if setting.name in REPEATABLE else given),
            )


class ServiceLinkTwistdTests(SynchronousTestCase):
    """The real twistd serves with Kubernetes' service links in its environment."""

    def test_starts_with_service_links(self):
        """twistd kvcache --port N starts and serves with every service-link variable set."""
        base = temp_dir(self, "servicelinks")
        environ = {
            name: value for name, value in os.environ.items() if not name.startswith("KVCACHE_")
        }
        environ.update(SERVICE_LINKS)
        server = ServerProcess(os.path.join(base, "data"), log_dir=base, environ=environ)
        self.addCleanup(server.stop)
        server.start()
        self.assertEqual(http_request(server.url, "PUT", "/v1/kv/a", b"1")[0], 201)
        self.assertEqual(http_request(server.url, "GET", "/v1/kv/a")[2], b"1")
        log = server.log_text()
        self.assertIn("ignoring Kubernetes service links (not kvcache settings): KVCACHE_HEADLESS_PORT ", log)
        self.assertEqual(server.terminate(), 0)


class TokenTests(FileMixin, SynchronousTestCase):
    """Tokens from the config file and from a token file."""

    TOKENS = """
        [tokens.app]
        secret = "%s"
        read = ["app/", "shared/"]
        write = ["app/"]

        [tokens.ops]
        secret = "%s"
        ops = true
        """ % (SECRET_A, SECRET_B)

    APP = Token("app", SECRET_A, read=("app/", "shared/"), write=("app/",))
    OPS = Token("ops", SECRET_B, ops=True)

    def test_tokens_in_config_file(self):
        """[tokens.NAME] tables in the config file become tokens, with their rules."""
        path = self.write("kv.toml", self.TOKENS)
        self.assertEqual(parse(["--config", path]), expected(config=path, tokens=(self.APP, self.OPS)))

    def test_token_file_option(self):
        """--token-file reads a file of [tokens.NAME] tables."""
        path = self.write("tokens.toml", self.TOKENS)
        self.assertEqual(
            parse(["--token-file", path]),
            expected(token_file=path, tokens=(self.APP, self.OPS)),
        )

    def test_token_file_from_environment(self):
        """$KVCACHE_TOKENS_FILE names the token file."""
        path = self.write("tokens.toml", self.TOKENS)
        options = parse(environ={"KVCACHE_TOKENS_FILE": path})
        self.assertEqual(options["tokens"], (self.APP, self.OPS))

    def test_token_file_from_config_file(self):
        """token-file in the config file is read too, with the config's own tokens."""
        tokens = self.write(
            "tokens.toml", '[tokens.ops]\nsecret = "%s"\nops = true\n' % (SECRET_B,)
        )
        config = self.write(
            "kv.toml",
            'token-file = "%s"\n[tokens.app]\nsecret = "%s"\nread = ["app/", "shared/"]\nwrite = ["app/"]\n'
            % (tokens, SECRET_A),
        )
        self.assertEqual(parse(["--config", config])["tokens"], (self.APP, self.OPS))

    def test_single_prefix_string(self):
        """A rule may be one prefix as a string; "" means every key."""
        path = self.write("t.toml", '[tokens.all]\nsecret = "%s"\nread = ""\n' % (SECRET_A,))
        self.assertEqual(parse(["--token-file", path])["tokens"], (Token("all", SECRET_A, read=("",)),))

    def assertTokenError(self, text, *needles):
        """The token file C{text} stops startup with a message holding every needle and never the secret."""
        path = self.write("t.toml", text)
        with self.assertRaises(SystemExit) as caught:
            parse(["--token-file", path])
        message = str(caught.exception.code)
        for needle in needles:
            self.assertIn(needle, message)
        self.assertNotIn(SECRET_A, message)
        self.assertNotIn(SECRET_B, message)

    def test_bad_tokens(self):
        """Short or missing secrets, unknown keys, bad rules and bad names are refused, naming the token."""
        self.assertTokenError('[tokens.x]\nsecret = "short"\n', "'x'", "at least 16")
        self.assertTokenError("[tokens.x]\nread = []\n", "'x'", "secret")
        self.assertTokenError('[tokens.x]\nsecret = "%s"\nadmin = true\n' % SECRET_A, "'admin'")
        self.assertTokenError('[tokens.x]\nsecret = "%s"\nread = [1]\n' % SECRET_A, "'read'")
        self.assertTokenError('[tokens.x]\nsecret = "%s"\nops = "yes"\n' % SECRET_A, "'ops'")
        self.assertTokenError('[tokens."a b"]\nsecret = "%s"\n' % SECRET_A, "'a b'")
        self.assertTokenError('[tokens.x]\nsecret = "with space %s"\n' % SECRET_A, "printable")
        self.assertTokenError('port = 1\n[tokens.x]\nsecret = "%s"\n' % SECRET_A, "'port'")

    def test_same_secret_twice(self):
        """Two tokens with one secret are refused (requests could not be told apart)."""
        self.assertTokenError(
            '[tokens.x]\nsecret = "%s"\n[tokens.y]\nsecret = "%s"\n' % (SECRET_A, SECRET_A),
            "'x'",
            "'y'",
        )

    def test_same_name_in_config_and_token_file(self):
        """A token defined in both the config file and the token file is refused."""
        tokens = self.write("tokens.toml", '[tokens.app]\nsecret = "%s"\n' % (SECRET_B,))
        config = self.write("kv.toml", '[tokens.app]\nsecret = "%s"\n' % (SECRET_A,))
        with self.assertRaises(SystemExit) as caught:
            parse(["--config", config, "--token-file", tokens])
        self.assertIn("'app' is defined twice", str(caught.exception.code))

    def test_readable_secret_files_are_reported(self):
        """Files holding secrets that others can read are listed (makeService warns about them)."""
        private = self.write("private.toml", self.TOKENS, mode=0o600)
        shared = self.write("shared.toml", self.TOKENS, mode=0o644)
        self.assertEqual(secret_files(parse(["--token-file", private]).config), [])
        self.assertEqual(secret_files(parse(["--token-file", shared]).config), [shared])


class ProtectedModeTests(FileMixin, SynchronousTestCase):
    """Listening beyond loopback with no token needs --allow-open."""

    def assertRefused(self, argv, environ=None):
        """Parsing stops with the protected-mode message."""
        with self.assertRaises(SystemExit) as caught:
            parse(argv, environ)
        message = str(caught.exception.code)
        self.assertIn("protected mode", message)
        self.assertIn("--allow-open", message)
        return message

    def test_public_ops_listener_refused(self):
        """The operations listener beyond loopback with no token is refused too."""
        message = self.assertRefused(["--ops-listen", "tcp:9100:interface=0.0.0.0"])
        self.assertIn("interface=0.0.0.0", message)

    def test_ops_listen_in_file(self):
        """ops-listen is a list of endpoint strings in the config file."""
        path = self.write("ops.toml", 'ops-listen = ["tcp:9100:interface=127.0.0.1"]\n')
        self.assertEqual(parse(["--config", path])["ops-listen"], ("tcp:9100:interface=127.0.0.1",))

    def test_public_host_refused(self):
        """--host 0.0.0.0 with no token is refused, naming the endpoint."""
        message = self.assertRefused(["--host", "0.0.0.0"])
        self.assertIn("interface=0.0.0.0", message)

    def test_listen_without_interface_refused(self):
        """A tcp/ssl endpoint without interface= binds every interface: refused; so are unknown endpoint types."""
        for endpoint in ("tcp:8080", "tcp6:8080", "ssl:8443:privateKey=k.pem", "systemd:domain=INET:index=0"):
            self.assertRefused(["--listen", endpoint])

    def test_loopback_and_unix_allowed(self):
        """127.0.0.0/8, ::1, localhost and unix sockets need no token."""
        for endpoint in (
            "tcp:8080:interface=127.0.0.1",
            "tcp:8080:interface=127.1.2.3",
            "tcp6:8080:interface=\\:\\:1",
            "ssl:8443:privateKey=k.pem:interface=127.0.0.1",
            "tcp:8080:interface=localhost",
            "unix:/tmp/kv.sock",
        ):
            self.assertTrue(is_local_endpoint(endpoint), endpoint)
            parse(["--listen", endpoint])

    def test_allow_open(self):
        """--allow-open (or allow-open in the file or environment) serves without tokens."""
        parse(["--host", "0.0.0.0", "--allow-open"])
        parse(["--host", "0.0.0.0"], {"KVCACHE_ALLOW_OPEN": "true"})
        path = self.write("kv.toml", 'host = "0.0.0.0"\nallow-open = true\n')
        parse(["--config", path])

    def test_token_lifts_protected_mode(self):
        """With a token configured, listening beyond loopback is allowed."""
        path = self.write("kv.toml", 'host = "0.0.0.0"\n[tokens.a]\nsecret = "%s"\n' % (SECRET_A,))
        self.assertEqual(len(parse(["--config", path])["tokens"]), 1)


class ResolveTests(SynchronousTestCase):
    """L{resolve} directly: where an error came from."""

    def test_error_layers(self):
        """Errors say which layer the bad value came from (the tap turns CLI ones into usage errors)."""
        from kvtwist.config import CLI, ENV

        with self.assertRaises(ConfigError) as caught:
            resolve({"port": "x"}, {})
        self.assertEqual(caught.exception.layer, CLI)
        with self.assertRaises(ConfigError) as caught:
            resolve({}, {"KVCACHE_PORT": "x"})
        self.assertEqual(caught.exception.layer, ENV)

    def test_limits(self):
        """The resolved limits are L{Limits} with the settings applied."""
        config = resolve({"max-body": "10", "cache-size": "2"}, {})
        self.assertEqual(config.limits, Limits(max_body=10, cache_bytes=2 * MiB))


class MakeServiceTests(FileMixin, SynchronousTestCase):
    """L{makeService} builds what the configuration says (nothing is started)."""

    def make(self, argv):
        data = os.path.join(temp_dir(self), "data")
        return makeService(parse(["--data", data] + list(argv)))

    def listeners(self, service):
        return [s for s in service if isinstance(s, StreamServerEndpointService)]

    def test_startup_objects_frozen_last(self):
        """The last service freezes startup's objects, so it runs after every other has started."""
        from kvtwist.gcfreeze import FreezeStartupObjects

        self.assertIsInstance(list(self.make([]))[-1], FreezeStartupObjects)

    def test_one_listener_per_endpoint_with_limits(self):
        """Each endpoint gets a listener serving one KVSite that holds the configured limits."""
        service = self.make(
            [
                "--listen", "tcp:0:interface=127.0.0.1",
                "--listen", "unix:" + os.path.join(temp_dir(self), "kv.sock"),
                "--max-body", "123",
                "--request-timeout", "4",
                "--max-connections", "9",
                "--access-log", "off",
            ]
        )
        listeners = self.listeners(service)
        self.assertEqual(len(listeners), 2)
        sites = {id(listener.factory): listener.factory for listener in listeners}
        self.assertEqual(len(sites), 1)
        site = listeners[0].factory
        self.assertIsInstance(site, KVSite)
        self.assertEqual(
            (site.max_body, site.request_timeout, site.max_connections, site.access_log),
            (123, 4.0, 9, "off"),
        )

    def test_bad_endpoint_stops_startup(self):
        """An endpoint that cannot be built (a missing certificate) stops startup with one line."""
        missing = os.path.join(temp_dir(self), "missing.pem")
        with self.assertRaises(SystemExit) as caught:
            self.make(["--listen", "ssl:0:privateKey=%s:interface=127.0.0.1" % missing])
        self.assertIn("bad endpoint", str(caught.exception.code))


class HelpTests(SynchronousTestCase):
    """twistd kvcache --help and --version."""

    def test_help_has_no_wrapping_gaps(self):
        """
        Each option's help is one paragraph (no run of spaces left from a
        docstring's indentation), wrapped at spaces only (no option name cut
        at a hyphen).
        """
        options = Options(environ={})
        for name, doc in options.docs.items():
            self.assertNotIn("  ", doc, name)
        text = " ".join(str(options).split())
        self.assertIn("command line; use --etcd-password-file, etcd-password in --config", text)
        self.assertIn("(use --token-file or [tokens.NAME] in --config)", text)
        self.assertNotRegex(text, r"[a-z]- [a-z]")

    def test_version_is_kvtwists(self):
        """--version prints kvtwist's version (with Twisted's and Python's) and exits 0."""
        import io
        import sys

        import kvtwist

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as caught:
            Options(environ={}).parseOptions(["--version"])
        self.assertEqual(caught.exception.code, 0)
        self.assertTrue(out.getvalue().startswith("kvtwist %s (Twisted " % (kvtwist.__version__,)),
                        out.getvalue())


class TwistdConfigErrorTests(FileMixin, SynchronousTestCase):
    """The real twistd refuses a bad configuration before serving."""

    def test_unknown_key_exits_non_zero(self):
        """twistd kvcache --config with an unknown key exits non-zero naming the key and the file, without a traceback."""
        path = self.write("kv.toml", "max-boddy = 5\n")
        result = run_twistd(["-n", "--pidfile=", "kvcache", "--config", path])
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertIn("'max-boddy'", output)
        self.assertIn(path, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("starting on", output)


class DocumentedConfigTests(FileMixin, SynchronousTestCase):
    """The config files shown in the docs are valid."""

    def toml_blocks(self, name: str) -> list:
        path = os.path.join(REPO, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return re.findall(r"```toml\n(.*?)```", text, re.S)

    def test_documented_files_parse(self):
        """Every TOML example in the configuration docs and the README snippet parses, tokens included."""
        checked = 0
        for name in ("docs/configuration.md", "README.md"):
            for block in self.toml_blocks(name):
                path = self.write("doc.toml", block)
                options = parse(["--config", path])
                self.assertEqual(len(options["tokens"]), 2, name)
                checked += 1
        self.assertEqual(checked, 2)


class StoreOptionTests(SynchronousTestCase):
    """--store names the embedded store or an etcd cluster."""

    def test_etcd_store(self):
        """An etcd:// spec with its endpoints is accepted and split into URLs."""
        from kvtwist.config_values import etcd_endpoints

        self.assertEqual(parse(["--store", "etcd://127.0.0.1:2379,127.0.0.1:22379"])["store"],
                         "etcd://127.0.0.1:2379,127.0.0.1:22379")
        self.assertEqual(etcd_endpoints("etcd://h1:2379, h2:2379"),
                         ["http://h1:2379", "http://h2:2379"])

    def test_bad_store(self):
        """Anything but shelve or etcd://HOST:PORT stops with a usage error naming it."""
        for spec in ("redis://x", "etcd://", "etcd://nohost"):
            error = self.assertRaises(usage.UsageError, parse, ["--store", spec])
            self.assertIn("store", str(error))

    def test_etcd_limits(self):
        """etcd's request limits are kvtwist limits on an etcd store: defaults, or as given; absent on shelve."""
        limits = parse(["--store", "etcd://127.0.0.1:2379"]).config.limits.as_dict()
        self.assertEqual(
            (limits["etcd_max_txn_ops"], limits["etcd_max_request_bytes"]), (128, 1536 * 1024)
        )
        given = parse(
            ["--store", "etcd://127.0.0.1:2379", "--etcd-max-txn-ops", "1000",
             "--etcd-max-request-bytes", "10MiB"]
        ).config.limits
        self.assertEqual((given.etcd_max_txn_ops, given.etcd_max_request_bytes), (1000, 10 << 20))
        shelve = parse().config.limits.as_dict()
        self.assertNotIn("etcd_max_txn_ops", shelve)
        self.assertNotIn("etcd_max_request_bytes", shelve)

    def test_etcd_limits_need_etcd(self):
        """Setting an etcd limit with the shelve store stops startup naming the setting."""
        with self.assertRaises((SystemExit, usage.UsageError)) as caught:
            parse(["--etcd-max-txn-ops", "500"])
        error = caught.exception
        message = str(error.code if isinstance(error, SystemExit) else error)
        self.assertIn("etcd-max-txn-ops", message)
        self.assertIn("applies only to an etcd store", message)


class EtcdSecurityOptionTests(FileMixin, SynchronousTestCase):
    """TLS and auth towards etcd: etcds://, CA, client certificate, user and password."""

    PASSWORD = "etcd pass-word 42"
    STORE = "etcds://127.0.0.1:2379,127.0.0.1:22379"

    def write_raw(self, name: str, content: str) -> str:
        """Write C{content} as it is (no dedent: spaces matter in a password)."""
        path = self.write(name, "")
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
        return path

    def assertStops(self, argv, environ=None, needles=(), hidden=None):
        """Parsing stops (usage error or exit) with every needle, never showing C{hidden}."""
        with self.assertRaises((SystemExit, usage.UsageError)) as caught:
            parse(argv, environ)
        error = caught.exception
        message = str(error.code if isinstance(error, SystemExit) else error)
        for needle in needles:
            self.assertIn(needle, message)
        if hidden is not None:
            self.assertNotIn(hidden, message)
        return message

    def test_every_option(self):
        """The TLS files, the user and a password file are read from the command line; the password from its file."""
        password_file = self.write("pw", self.PASSWORD + "\n")
        argv = [
            "--store", self.STORE,
            "--etcd-ca", "ca.pem",
            "--etcd-cert", "client.pem",
            "--etcd-key", "client-key.pem",
            "--etcd-user", "kvtwist",
            "--etcd-password-file", password_file,
        ]
        options = parse(argv)
        self.assertEqual(
            options,
            expected(
                store=self.STORE,
                etcd_ca="ca.pem",
                etcd_cert="client.pem",
                etcd_key="client-key.pem",
                etcd_user="kvtwist",
                etcd_password_file=password_file,
                etcd_password=Secret(self.PASSWORD),
            ),
        )
        self.assertEqual(options.config.etcd_credentials, ("kvtwist", self.PASSWORD))
        self.assertNotIn(self.PASSWORD, repr(options.config))
        self.assertNotIn(self.PASSWORD, repr(dict(options)))

    def test_etcds_endpoints(self):
        """etcds:// names https endpoints; etcd:// stays plain http."""
        from kvtwist.config_values import etcd_endpoints, etcd_remote_plain_hosts

        self.assertEqual(
            etcd_endpoints(self.STORE), ["https://127.0.0.1:2379", "https://127.0.0.1:22379"]
        )
        self.assertEqual(etcd_endpoints("etcd://h:1"), ["http://h:1"])
        self.assertEqual(etcd_remote_plain_hosts("etcd://127.0.0.1:1,10.0.0.1:2"), ["10.0.0.1"])
        self.assertEqual(etcd_remote_plain_hosts("etcds://10.0.0.1:2"), [])
        for spec in ("etcds://", "etcds://nohost"):
            self.assertRaises(usage.UsageError, parse, ["--store", spec])

    def test_password_from_file_and_environment(self):
        """The password may be in the config file or the environment; the environment wins."""
        config = self.write(
            "kv.toml",
            """
            store = "etcds://127.0.0.1:2379"
            etcd-user = "kvtwist"
            etcd-password = "from the file"
            """,
        )
        self.assertEqual(
            parse(["--config", config]).config.etcd_credentials, ("kvtwist", "from the file")
        )
        options = parse(["--config", config], {"KVCACHE_ETCD_PASSWORD": self.PASSWORD})
        self.assertEqual(options.config.etcd_credentials, ("kvtwist", self.PASSWORD))
        # A password file on a higher layer beats a password on a lower one.
        password_file = self.write("pw", "from the password file")
        options = parse(["--config", config, "--etcd-password-file", password_file])
        self.assertEqual(options.config.etcd_credentials[1], "from the password file")

    def test_password_never_on_the_command_line(self):
        """--etcd-password is refused, spelled out or abbreviated, without echoing the value."""
        for argv in (
            ["--etcd-password", self.PASSWORD],
            ["--etcd-password=" + self.PASSWORD],
            ["--etcd-passw", self.PASSWORD],
        ):
            with self.assertRaises(usage.UsageError) as caught:
                parse(argv)
            self.assertNotIn(self.PASSWORD, str(caught.exception))

    def test_password_file_rules(self):
        """One line; a final newline is dropped, spaces kept; an empty, multi-line or missing file is named."""
        for content, password in (("pw\n", "pw"), ("pw\r\n", "pw"), (" pw \n", " pw ")):
            path = self.write_raw("pw", content)
            argv = ["--store", self.STORE, "--etcd-user", "u", "--etcd-password-file", path]
            self.assertEqual(parse(argv).config.etcd_credentials, ("u", password))
        for content, needle in (("", "is empty"), ("\n", "is empty"), ("a\nb\n", "on one line")):
            path = self.write_raw("pw", content)
            argv = ["--store", self.STORE, "--etcd-user", "u", "--etcd-password-file", path]
            self.assertStops(argv, needles=[path, needle], hidden="a\nb")
        missing = os.path.join(temp_dir(self), "missing")
        argv = ["--store", self.STORE, "--etcd-user", "u", "--etcd-password-file", missing]
        self.assertStops(argv, needles=["cannot read the etcd password file", missing])

    def test_bad_password_value_is_not_echoed(self):
        """A password of the wrong type stops startup naming the key, not showing the value."""
        config = self.write("kv.toml", 'store = "etcds://h:1"\netcd-user = "u"\netcd-password = 4711\n')
        self.assertStops(["--config", config], needles=["'etcd-password'", config], hidden="4711")

    def test_only_with_an_etcd_store(self):
        """The etcd TLS and auth settings are refused with the shelve store, naming where they came from."""
        self.assertStops(["--etcd-ca", "ca.pem"], needles=["--etcd-ca", "applies only to an etcd store"])
        self.assertStops(
            [], {"KVCACHE_ETCD_USER": "u"}, needles=["KVCACHE_ETCD_USER", "only to an etcd store"]
        )

    def test_tls_files_need_etcds(self):
        """A CA or client certificate with a plain etcd:// store says to write etcds://."""
        for option in ("--etcd-ca", "--etcd-cert"):
            self.assertStops(
                ["--store", "etcd://10.0.0.1:2379", option, "x.pem"],
                needles=[option, "etcds://10.0.0.1:2379"],
            )

    def test_incomplete_pairs(self):
        """A certificate needs its key (and back); a user needs a password (and back); one layer may not give two passwords."""
        base = ["--store", self.STORE]
        self.assertStops(base + ["--etcd-cert", "c.pem"], needles=["--etcd-cert", "etcd-key"])
        self.assertStops(base + ["--etcd-key", "k.pem"], needles=["--etcd-key", "etcd-cert"])
        self.assertStops(base + ["--etcd-user", "u"], needles=["--etcd-user", "needs a password"])
        password_file = self.write("pw", "pw")
        self.assertStops(
            base + ["--etcd-password-file", password_file], needles=["no etcd-user"]
        )
        self.assertStops(
            base + ["--etcd-user", "u"],
            {"KVCACHE_ETCD_PASSWORD": "pw", "KVCACHE_ETCD_PASSWORD_FILE": password_file},
            needles=["KVCACHE_ETCD_PASSWORD", "keep one"],
            hidden="'pw'",
        )

    def test_readable_secret_files_are_reported(self):
        """The password file, the client key and a config file holding the password are warned about when others can read them."""
        password_file = self.write("pw", "pw", mode=0o644)
        key = self.write("key.pem", "", mode=0o640)
        config = self.write(
            "kv.toml",
            'store = "etcds://h:1"\netcd-user = "u"\netcd-password = "pw"\n'
            'etcd-cert = "c.pem"\netcd-key = "%s"\n' % (key,),
            mode=0o644,
        )
        self.assertEqual(secret_files(parse(["--config", config]).config), [config, key])
        options = parse(["--store", "etcds://h:1", "--etcd-user", "u", "--etcd-password-file", password_file])
        self.assertEqual(secret_files(options.config), [password_file])

    def test_store_built_with_tls_and_credentials(self):
        """makeService gives the etcd store https endpoints, the TLS policy and the credentials; an unreadable CA stops startup."""
        from kvtwist.store.etcd.store import EtcdStore
        from kvtwist.tap import open_etcd_store
        from tests.helpers.etcd import make_pki

        pki = make_pki(temp_dir(self, "pki"))
        password_file = self.write("pw", "pw")
        argv = [
            "--store", self.STORE,
            "--etcd-ca", pki.ca,
            "--etcd-cert", pki.client_cert,
            "--etcd-key", pki.client_key,
            "--etcd-user", "u",
            "--etcd-password-file", password_file,
        ]
        store = open_etcd_store(parse(argv).config, Clock())
        self.assertIsInstance(store, EtcdStore)
        self.assertEqual(store.endpoints, ["https://127.0.0.1:2379", "https://127.0.0.1:22379"])
        self.assertIsNotNone(store.gateway._tls)
        self.assertEqual(store.gateway._credentials.user, "u")
        missing = os.path.join(temp_dir(self), "ca.pem")
        argv[argv.index(pki.ca)] = missing
        with self.assertRaises(SystemExit) as caught:
            open_etcd_store(parse(argv).config, Clock())
        self.assertIn("cannot read the etcd CA file %s" % (missing,), str(caught.exception.code))
