"""
What the real C{twistd kvcache} says about itself: C{--version}, the
startup log (kvtwist's version, each listening URL, the admin page's URL)
and the JSON access log on stdout, one whole JSON object a line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from typing import List
from urllib.parse import quote

from twisted.trial.unittest import SynchronousTestCase

import kvtwist
from tests.helpers.e2e import ServerProcess, http_request, run_twistd, start_server, temp_dir

#: The prefix twistd's own log lines carry: "<time> [<system>] ".
TWISTD_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[")


def log_lines(server: ServerProcess) -> List[str]:
    """The server's stdout and stderr so far, line by line."""
    return server.log_text().splitlines()


class VersionTests(SynchronousTestCase):
    """twistd -n kvcache --version."""

    def test_version(self) -> None:
        """--version prints kvtwist's version, not only Twisted's, and exits 0."""
        result = run_twistd(["-n", "kvcache", "--version"])
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertTrue(result.stdout.startswith("kvtwist %s (Twisted " % (kvtwist.__version__,)),
                        result.stdout)


class StartupLogTests(SynchronousTestCase):
    """The startup log names the version and every URL the server answers on."""

    def test_version_and_urls(self) -> None:
        """
        Startup logs kvtwist's version, the URL of each listener (TCP and a
        unix socket, in the http+unix form kvtwist --url takes) and the admin
        page's URL on the TCP one.
        """
        directory = tempfile.mkdtemp(prefix="kvsock-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        socket = os.path.join(directory, "kv.sock")
        server = start_server(self, extra_args=["--listen", "tcp:{port}:interface=127.0.0.1",
                                                "--listen", "unix:" + socket])
        text = server.log_text()
        self.assertIn("kvcache: kvtwist %s (Twisted " % (kvtwist.__version__,), text)
        url = "http://127.0.0.1:%d/" % (server.port,)
        self.assertIn("kvcache: listening on %s (admin page: %sui/)" % (url, url), text)
        self.assertIn("kvcache: listening on http+unix://%s/\n" % (quote(socket, safe=""),), text)

    def test_no_admin_page_url_when_off(self) -> None:
        """With --ui off the listener's URL is logged without an admin page."""
        server = start_server(self, extra_args=["--ui", "off"])
        self.assertIn("kvcache: listening on http://127.0.0.1:%d/\n" % (server.port,),
                      server.log_text())


class JSONAccessLogTests(SynchronousTestCase):
    """access-log = "json" with no access-log file: JSON lines on stdout."""

    def requests(self, server: ServerProcess) -> None:
        for method, path, body in (("PUT", "/v1/kv/a", b"1"), ("GET", "/v1/kv/a", None),
                                   ("GET", "/nope", None), ("DELETE", "/v1/kv/zz", None)):
            http_request(server.url, method, path, body)

    def access_lines(self, server: ServerProcess, count: int) -> List[str]:
        """Wait (bounded) for C{count} access lines: the lines twistd did not write."""
        lines: List[str] = []
        deadline = time.monotonic() + 10
        for _ in range(500):
            lines = [l for l in log_lines(server) if not TWISTD_LINE.match(l)]
            if len(lines) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return lines

    def test_lines_are_json(self) -> None:
        """
        Every access line on stdout is one whole JSON object (no twistd
        prefix), one per request, among twistd's own log lines.
        """
        server = start_server(self, extra_args=["--access-log", "json"])
        before = len([l for l in log_lines(server) if not TWISTD_LINE.match(l)])
        self.requests(server)
        lines = self.access_lines(server, before + 4)
        self.assertNotIn("[twisted.python.log#info]", server.log_text())
        documents = [json.loads(line) for line in lines]  # every line parses
        self.assertTrue(all(isinstance(d, dict) for d in documents))
        mine = [(d["method"], d["path"], d["status"]) for d in documents[before:]]
        self.assertEqual(mine, [("PUT", "/v1/kv/a", 201), ("GET", "/v1/kv/a", 200),
                                ("GET", "/nope", 404), ("DELETE", "/v1/kv/zz", 404)])

    def test_stdout_is_pure_json_with_a_log_file(self) -> None:
        """With twistd's own log in --logfile, every line of stdout parses as JSON."""
        base = temp_dir(self)
        twistd_log = os.path.join(base, "twistd.log")

        class LogElsewhere(ServerProcess):
            def _logged_listening(self) -> bool:
                try:
                    with open(twistd_log, encoding="utf-8") as f:
                        return " starting on " in f.read()
                except OSError:
                    return False

        server = LogElsewhere(os.path.join(base, "data"), ["--access-log", "json"],
                              log_dir=base, twistd_args=["--logfile", twistd_log])
        self.addCleanup(server.stop)
        server.start()
        self.requests(server)
        lines = self.access_lines(server, 4)
        self.assertGreaterEqual(len(lines), 4)
        self.assertEqual(len(lines), len(log_lines(server)))
        for line in log_lines(server):
            self.assertIsInstance(json.loads(line), dict, line)
