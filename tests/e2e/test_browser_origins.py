"""
Web pages of other origins against the real C{twistd kvcache}, in a real
headless Chromium driven by selenium (the browser helpers of
C{tests/e2e/test_ui.py}; skipped, saying why, where Chromium, its driver or
selenium is missing).

The hostile page is served by a plain twisted.web server on another
loopback port (C{python -m twisted web}), under C{localhost}, while kvcache
listens on C{127.0.0.1}: another origin, as a page on the web would be. It
sends what a page may send anywhere without asking: a C{fetch} with
C{mode: "no-cors"} POSTing a batch, and C{text/plain} form POSTs to
C{/set} then C{/commit}, whose body is JSON. Against a default server
nothing changes. Against a server that invites the page's origin
(C{--cors-origin}), the same requests do write (so the browser really sent
them, and the first result means something), and a CORS C{fetch} can read
the answer and its exposed headers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
from typing import Any, Dict, Optional

from tests.e2e import test_ui
from tests.helpers.e2e import ServerProcess, free_port, http_request, temp_dir

#: The hostile page: it takes kvcache's URL from its query string, and
#: C{attack()} resolves with what the page could observe.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>not a kvcache page</title></head>
<body>
<iframe name="sink" id="sink"></iframe>
<form id="set" method="POST" enctype="text/plain" target="sink">
  <input type="hidden" name='{"formkey": 1, "pad": "' value='"}'>
</form>
<form id="commit" method="POST" enctype="text/plain" target="sink"></form>
<script>
const target = new URLSearchParams(location.search).get("target");

function submitted(form) {
  // Resolves once the answer is loaded in the frame (a 204 loads nothing:
  // the test waits for /commit in the server's access log instead).
  return new Promise((resolve) => {
    document.getElementById("sink").addEventListener("load", () => resolve(), {once: true});
    form.action = target + "/" + form.id;
    form.submit();
  });
}

async function attack() {
  const seen = {};
  try {
    await fetch(target + "/v1/batch", {
      mode: "no-cors", method: "POST", headers: {"Content-Type": "text/plain"},
      body: JSON.stringify({ops: [{op: "set", key: "pwned", value: 1}]}),
    });
    seen.batch = "sent";
  } catch (e) { seen.batch = String(e); }
  await submitted(document.getElementById("set"));
  try {
    const answer = await fetch(target + "/v1/kv/cors", {
      method: "PUT", headers: {"Content-Type": "application/json"}, body: "42",
    });
    seen.cors = {status: answer.status, etag: answer.headers.get("ETag"),
                 revision: answer.headers.get("KV-Revision")};
  } catch (e) { seen.cors = String(e); }
  document.getElementById("commit").action = target + "/commit";
  document.getElementById("commit").submit();
  return seen;
}
</script>
</body></html>
"""

#: Seconds the page server gets to answer after it was started.
PAGE_SERVER_START = 30.0


class PageServer:
    """A static twisted.web server for the hostile page, on a free loopback port."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: Optional[subprocess.Popen] = None

    @property
    def origin(self) -> str:
        return "http://localhost:%d" % (self.port,)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "twisted", "web",
             "--listen", "tcp:%d:interface=127.0.0.1" % (self.port,), "--path", self.directory],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=self.directory, start_new_session=True,
        )
        deadline = time.monotonic() + PAGE_SERVER_START
        for _ in range(int(PAGE_SERVER_START / 0.05)):
            try:
                if http_request(self.origin, "GET", "/page.html", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the page server did not start on port %d" % (self.port,))

    def stop(self) -> None:
        if self.process is not None:
            test_ui.end_process(self.process)
            self.process = None


def tearDownModule():
    test_ui.tearDownModule()


@unittest.skipIf(
    test_ui.BROWSER_MISSING is not None, "browser tests skipped: %s" % (test_ui.BROWSER_MISSING,)
)
class ForeignPageTests(unittest.TestCase):
    """A page of another origin, opened in Chromium, against two kvcache servers."""

    @classmethod
    def setUpClass(cls):
        cls.base = tempfile.mkdtemp(prefix="kvtwist-origins-")
        with open(os.path.join(cls.base, "page.html"), "w", encoding="utf-8") as f:
            f.write(PAGE)
        cls.pages = PageServer(cls.base)
        cls.pages.start()

    @classmethod
    def tearDownClass(cls):
        cls.pages.stop()

    def server(self, *args: str) -> ServerProcess:
        """A kvcache on a fresh data directory, stopped when the test ends."""
        base = temp_dir(self, "origins")
        server = ServerProcess(os.path.join(base, "data"), list(args), log_dir=base)
        self.addCleanup(server.stop)
        server.start()
        return server

    def attack(self, server: ServerProcess) -> Dict[str, Any]:
        """Open the hostile page against C{server} and run its attack; what the page saw."""
        driver = test_ui.browser()
        # Left only when the test ends: leaving at once could cancel the
        # form's last POST, still on its way.
        self.addCleanup(driver.get, "about:blank")
        driver.get("%s/page.html?target=%s" % (self.pages.origin, server.url))
        return driver.execute_async_script("attack().then(arguments[0])")

    def wait_for_commit(self, server: ServerProcess) -> str:
        """Wait, bounded, until the form's POST /commit is in the access log; the log."""
        deadline = time.monotonic() + test_ui.WAIT
        for _ in range(int(test_ui.WAIT / 0.05)):
            log = server.log_text()
            if '"POST /commit HTTP/1.1"' in log or time.monotonic() > deadline:
                return log
            time.sleep(0.05)
        return server.log_text()

    def keys(self, server: ServerProcess) -> list:
        status, _, body = http_request(server.url, "GET", "/v1/kv/")
        self.assertEqual(status, 200)
        return [item["key"] for item in json.loads(body)["items"]]

    def test_default_server_unchanged(self):
        """
        Against a default server the no-cors batch, the form POSTs to /set
        and /commit and a CORS PUT change nothing, and the page reads
        nothing back.
        """
        server = self.server()
        seen = self.attack(server)
        log = self.wait_for_commit(server)
        self.assertEqual(self.keys(server), [])
        self.assertEqual(http_request(server.url, "GET", "/v1/limits")[1]["kv-revision"], "0")
        # The CORS fetch fails in the page: no Access-Control-Allow-Origin.
        self.assertIsInstance(seen["cors"], str, seen)
        # Each request did reach the server, and was refused (access log).
        for request in ("POST /v1/batch", "POST /set", "POST /commit", "OPTIONS /v1/kv/cors"):
            self.assertIn('"%s HTTP/1.1" 403' % (request,), log)

    def test_invited_origin_reaches_the_server(self):
        """
        With the page's origin invited (--cors-origin), the same requests
        write (the browser did send them), and the page's CORS PUT reads its
        status and the exposed ETag and KV-Revision.
        """
        server = self.server("--cors-origin", self.pages.origin)
        seen = self.attack(server)
        self.assertIn('"POST /commit HTTP/1.1" 204', self.wait_for_commit(server))
        self.assertEqual(sorted(self.keys(server)), ["cors", "formkey", "pad", "pwned"])
        self.assertEqual(seen["batch"], "sent")
        self.assertEqual(seen["cors"]["status"], 201, seen)
        self.assertIsNotNone(seen["cors"]["etag"], seen)
        self.assertIsNotNone(seen["cors"]["revision"], seen)
