"""
The admin page (C{/ui/}): its static resource in memory, and the page itself
clicked through in a real headless Chromium driven by selenium.

The browser tests need Debian's C{chromium} and C{chromium-driver} and the
C{selenium} package; without them they are skipped, saying what is missing.
They run the page against C{tests/helpers/ui_server.py} (a kvcache over a
MemoryStore, in a subprocess on a free 127.0.0.1 port) and change keys
behind the page's back through the plain HTTP API.

Set C{KVTWIST_UI_SCREENSHOT=1} to rewrite the pictures in C{docs/img/}:
C{ui.png} (the tour), C{ui-tree.png} (folders and the total count),
C{ui-live.png} (the open key following the live feed, with a diff),
C{ui-conflict.png} (a save refused as a conflict), C{ui-history.png} (a
key's versions, an older one shown to restore) and C{ui-leases.png} (the
Leases panel).

One module though long: the browser tests share one server subprocess and
one Chromium session per class, and their page helpers.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from typing import Dict, List, Optional, Tuple

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.testing import memory_root
from kvtwist.web.ui import CONTENT_SECURITY_POLICY, load_assets, make_ui_resource
from tests.helpers.paths import REPO
from tests.helpers.webtest import TreeClient

try:
    from selenium import webdriver
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - depends on the machine
    webdriver = None

CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT_ENV = "KVTWIST_UI_SCREENSHOT"
SCREENSHOT_DIR = os.path.join(REPO, "docs", "img")

#: Seconds any one browser condition may take to come true. Generous for a
#: busy 2-core CI machine; a passing run waits far less.
WAIT = 15.0
#: Seconds the page server gets to start listening.
SERVER_START = 30.0


def _chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _browser_missing() -> Optional[str]:
    """Why the browser tests cannot run here, or None if they can."""
    if webdriver is None:
        return "selenium is not installed (pip install selenium)"
    if _chromium() is None:
        return "chromium is not installed (apt-get install chromium)"
    if not os.access(CHROMEDRIVER, os.X_OK):
        return "%s is missing (apt-get install chromium-driver)" % (CHROMEDRIVER,)
    return None


BROWSER_MISSING = _browser_missing()


# --------------------------------------------------------------------------
# The static resource, in memory (no browser).


class StaticResourceTests(SynchronousTestCase):
    """C{/ui} and its files through StubTreq over the whole tree."""

    def setUp(self):
        self.client = TreeClient(self, memory_root(extra_children={b"ui": make_ui_resource()}))

    def test_index(self):
        """/ui/ is the page: HTML, revalidated (no-cache + ETag), with the strict CSP."""
        answer = self.client.request("GET", "/ui/")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.content_type, "text/html; charset=utf-8")
        self.assertEqual(answer.header("cache-control"), "no-cache")
        self.assertRegex(answer.header("etag"), r'^"[0-9a-f]{32}"$')
        self.assertEqual(answer.header("content-security-policy"), CONTENT_SECURITY_POLICY.decode())
        self.assertEqual(answer.header("x-content-type-options"), "nosniff")
        self.assertEqual(answer.header("x-frame-options"), "DENY")
        self.assertEqual(answer.header("referrer-policy"), "no-referrer")
        self.assertIn(b"<title>kvtwist admin</title>", answer.body)
        self.assertEqual(self.client.request("GET", "/ui/index.html").body, answer.body)

    def test_csp_is_self_only(self):
        """The policy allows only the page's own origin: no inline code, no other hosts."""
        policy = dict(
            (part.split()[0], part.split()[1:])
            for part in CONTENT_SECURITY_POLICY.decode().split(";")
        )
        self.assertEqual(policy["default-src"], ["'none'"])
        for directive in ("script-src", "style-src", "connect-src", "img-src"):
            self.assertEqual(policy[directive], ["'self'"], directive)
        self.assertEqual(policy["frame-ancestors"], ["'none'"])
        self.assertEqual(policy["object-src"], ["'none'"])
        self.assertNotIn("unsafe", CONTENT_SECURITY_POLICY.decode())

    def test_content_types(self):
        """Each asset has its type; JS modules must be text/javascript or browsers refuse them."""
        expected = {
            "app.js": "text/javascript; charset=utf-8",
            "api.js": "text/javascript; charset=utf-8",
            "watch.js": "text/javascript; charset=utf-8",
            "diff.js": "text/javascript; charset=utf-8",
            "transfer.js": "text/javascript; charset=utf-8",
            "style.css": "text/css; charset=utf-8",
            "favicon.svg": "image/svg+xml",
        }
        for name, content_type in expected.items():
            answer = self.client.request("GET", "/ui/" + name)
            self.assertEqual((answer.status, answer.content_type), (200, content_type), name)
            self.assertEqual(answer.header("cache-control"), "no-cache", name)
            self.assertIsNotNone(answer.header("content-security-policy"), name)

    def test_page_needs_no_inline_code(self):
        """The page works under the CSP: scripts and styles are files, no inline code or style."""
        html = self.client.request("GET", "/ui/").body.decode("utf-8")
        self.assertIn('<script type="module" src="app.js"></script>', html)
        self.assertNotRegex(html, r"<script(?![^>]*\bsrc=)")
        self.assertNotIn("<style", html)
        self.assertNotRegex(html, r"\sstyle=")
        self.assertNotRegex(html, r"\son[a-z]+=")
        self.assertNotRegex(html, r"(src|href)=\"(https?:)?//")

    def test_modules_resolve(self):
        """Every file the page and its modules refer to is served (no build step, no CDN)."""
        assets = load_assets()
        wanted = set()
        for name, asset in assets.items():
            text = asset.body.decode("utf-8")
            wanted.update(re.findall(r'(?:src|href)="([^"#?:]+)"', text))
            wanted.update(re.findall(r'from "\./([^"]+)"', text))
        self.assertIn("app.js", wanted)
        self.assertIn("api.js", wanted)
        for name in sorted(wanted):
            self.assertEqual(self.client.request("GET", "/ui/" + name).status, 200, name)

    def test_not_modified(self):
        """A GET with the file's ETag in If-None-Match is a bodiless 304."""
        tag = self.client.request("GET", "/ui/app.js").header("etag")
        answer = self.client.request("GET", "/ui/app.js", headers={"If-None-Match": tag})
        self.assertEqual((answer.status, answer.body), (304, b""))
        self.assertEqual(answer.header("etag"), tag)
        answer = self.client.request("GET", "/ui/app.js", headers={"If-None-Match": '"other"'})
        self.assertEqual(answer.status, 200)

    def test_head(self):
        """HEAD answers the GET's headers without the body."""
        get = self.client.request("GET", "/ui/style.css")
        head = self.client.request("HEAD", "/ui/style.css")
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(head.content_type, "text/css; charset=utf-8")
        self.assertEqual(head.header("etag"), get.header("etag"))

    def test_unknown_file(self):
        """Unknown files and deeper paths are problem+json 404s, still with the CSP."""
        for path in ("/ui/nope.js", "/ui/app.js/more", "/ui//", "/ui/static/app.js", "/ui/.hidden"):
            answer = self.client.problem("GET", path, 404, "not-found")
            self.assertIsNotNone(answer.header("content-security-policy"), path)

    def test_other_methods(self):
        """Only GET and HEAD: anything else is a 405 problem with Allow."""
        for path in ("/ui/", "/ui/app.js"):
            answer = self.client.problem("POST", path, 405, "method-not-allowed")
            self.assertEqual(answer.header("allow"), "GET, HEAD")
        answer = self.client.problem("DELETE", "/ui/", 405, "method-not-allowed")

    def _no_follow(self, path: str):
        stub = StubTreq(memory_root(extra_children={b"ui": make_ui_resource()}))
        response = self.successResultOf(
            stub.request("GET", "http://kv.test" + path, allow_redirects=False)
        )
        body = self.successResultOf(stub.content(response))
        return response, body

    def test_bare_ui_is_the_seed_key(self):
        """/ui without the slash is the seed's key ui, not the page (its 404 is the key's)."""
        response, body = self._no_follow("/ui")
        self.assertEqual(response.code, 404)
        self.assertIn(b"key-not-found", body)

    def test_missing_index(self):
        """A package without index.html is refused when the resource is built, not at request time."""
        from kvtwist.web.ui import UIResource

        with self.assertRaises(ValueError):
            UIResource({})


# --------------------------------------------------------------------------
# The page in a real browser.


def end_process(process: subprocess.Popen) -> None:
    """SIGTERM C{process} and reap it; SIGKILL it if it lingers past 10 s."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class UIServer:
    """C{tests/helpers/ui_server.py} in a subprocess on a free 127.0.0.1 port."""

    def __init__(self, token: Optional[str] = None, arguments: Tuple[str, ...] = ()) -> None:
        self.token = token
        self.arguments = arguments
        self.process: Optional[subprocess.Popen] = None
        self.port = 0
        self._log = tempfile.TemporaryFile()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % (self.port,)

    def start(self) -> None:
        command = [sys.executable, "-m", "tests.helpers.ui_server"]
        if self.token:
            command += ["--token", self.token]
        command += list(self.arguments)
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL
        )
        line = self._first_line(SERVER_START)
        match = re.match(rb"PORT (\d+)$", line.strip())
        if not match:
            self.stop()
            raise RuntimeError("the UI server did not start: %r\n%s" % (line, self.log()))
        self.port = int(match.group(1))

    def _first_line(self, timeout: float) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        try:
            if not selector.select(timeout):
                return b"(nothing within %.0f s)" % (timeout,)
            return self.process.stdout.readline()
        finally:
            selector.close()

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.process is None:
            return
        end_process(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
        self._log.close()

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
    ) -> Tuple[int, Dict[str, str], bytes]:
        """One blocking request to the API (the change made behind the page's back)."""
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def put_json(self, key: str, value, ttl: Optional[int] = None) -> int:
        """Write a JSON value; return the status."""
        path = "/v1/kv/" + key + ("?ttl=%d" % (ttl,) if ttl else "")
        status, _, body = self.request(
            "PUT", path, json.dumps(value).encode(), {"Content-Type": "application/json"}
        )
        assert status in (200, 201), (status, body)
        return status

    def get_json(self, key: str):
        """A key's JSON value, or None when it is absent."""
        status, _, body = self.request("GET", "/v1/kv/" + key)
        if status == 404:
            return None
        assert status == 200, (status, body)
        return json.loads(body)


_driver = None
_profile: Optional[tempfile.TemporaryDirectory] = None


def browser():
    """The module's one Chromium (started on first use: it takes a second or two)."""
    global _driver, _profile
    if _driver is None:
        _profile = tempfile.TemporaryDirectory(prefix="kvtwist-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = _chromium()
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,1000",
            "--user-data-dir=" + _profile.name,
        ):
            options.add_argument(argument)
        # The console tells us about CSP violations and uncaught errors.
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # An explicit driver path: selenium-manager must not download anything.
        _driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        _driver.set_page_load_timeout(WAIT)
        _driver.set_script_timeout(WAIT)
    return _driver


def tearDownModule():
    global _driver, _profile
    if _driver is not None:
        _driver.quit()
        _driver = None
    if _profile is not None:
        _profile.cleanup()
        _profile = None


@unittest.skipIf(BROWSER_MISSING is not None, "browser tests skipped: %s" % (BROWSER_MISSING,))
class BrowserCase(unittest.TestCase):
    """A page server per class, the module's browser, and helpers to drive the page."""

    token: Optional[str] = None
    #: More options of C{tests/helpers/ui_server.py} for this class's server.
    server_arguments: Tuple[str, ...] = ()
    server: UIServer
    _loads = 0

    @classmethod
    def setUpClass(cls):
        cls.server = UIServer(cls.token, cls.server_arguments)
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def setUp(self):
        self.driver = browser()
        self.driver.get_log("browser")  # drop what earlier tests logged

    def tearDown(self):
        # Stop the page's watch stream before the next test (or the server) goes.
        self.driver.get("about:blank")
        problems = [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if "Content Security Policy" in entry["message"] or "Uncaught" in entry["message"]
        ]
        self.assertEqual(problems, [], "the page logged CSP violations or uncaught errors")

    # -- driving the page

    def open(self, prefix: str = "", flat: bool = False) -> None:
        """
        Load the page fresh (a new document: the query differs every time),
        in the tree view or, with C{flat}, listing every key under the prefix.
        """
        BrowserCase._loads += 1
        url = "%s/ui/?load=%d#" % (self.server.url, BrowserCase._loads)
        if prefix:
            url += "prefix=" + prefix + "&"
        if flat:
            url += "view=flat"
        self.driver.get(url)
        self.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")

    def until(self, condition, describe=None, timeout: float = WAIT):
        """
        Wait, bounded, for C{condition(driver)} to be true (rows may be
        redrawn meanwhile: stale elements are retried). On timeout the
        failure says C{describe()} (a string or a function giving one, asked
        only then, so it sees the page's final state).
        """
        try:
            return WebDriverWait(
                self.driver,
                timeout,
                poll_frequency=0.05,
                ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
            ).until(condition)
        except TimeoutException:
            message = describe() if callable(describe) else describe
            self.fail("%s\n(after %.0f s; page state: %s)" % (message or "timed out", timeout, self.page_state()))

    def page_state(self) -> str:
        """The page's visible messages, for failure reports."""
        parts = []
        for element_id in (
            "key-count", "list-status", "keys-message", "editor-message", "txn-message", "live-state", "edit-meta",
        ):
            parts.append("%s=%r" % (element_id, self.safe_text(element_id)))
        return ", ".join(parts)

    def by_id(self, element_id: str):
        return self.driver.find_element(By.ID, element_id)

    def text_of(self, element_id: str) -> str:
        return self.by_id(element_id).text

    def wait_text(self, element_id: str, fragment: str) -> str:
        """Wait until element C{element_id} shows C{fragment}; return its text."""
        self.until(
            lambda d: fragment in self.text_of(element_id),
            lambda: "%r never showed %r (it shows %r)"
            % (element_id, fragment, self.safe_text(element_id)),
        )
        return self.text_of(element_id)

    def safe_text(self, element_id: str) -> str:
        try:
            return self.text_of(element_id)
        except Exception as e:  # only for failure messages
            return "(%s)" % (e,)

    def row_keys(self) -> List[str]:
        # One script call reads every row at once: the rows are redrawn
        # whenever a change arrives, so reading them one by one could
        # mix two renderings (or hit a stale row).
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#key-rows tr[data-key]'),"
            " (row) => row.dataset.key);"
        )

    def wait_rows(self, keys: List[str]) -> None:
        self.until(
            lambda d: self.row_keys() == keys,
            lambda: "the list never showed %r (it shows %r)" % (keys, self.row_keys()),
        )

    def click(self, element_id: str) -> None:
        self.until(expected_conditions.element_to_be_clickable((By.ID, element_id))).click()

    def open_key(self, key: str) -> None:
        """Click a key in the list and wait for the editor to show it."""

        def click(driver) -> bool:
            driver.find_element(By.CSS_SELECTOR, 'tr[data-key="%s"] button' % (key,)).click()
            return True

        self.until(click, "no row for %r" % (key,))
        self.until(
            lambda d: self.by_id("edit-key").get_attribute("value") == key
            and "revision" in self.text_of("edit-meta"),
            "the editor never showed %r" % (key,),
        )

    def value_box(self) -> str:
        return self.by_id("edit-value").get_attribute("value")

    def type_value(self, text: str) -> None:
        box = self.by_id("edit-value")
        box.clear()
        box.send_keys(text)

    def type_into(self, element_id: str, text: str) -> None:
        box = self.by_id(element_id)
        box.clear()
        box.send_keys(text)

    def folder_names(self) -> List[str]:
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#key-rows tr[data-folder]'),"
            " (row) => row.dataset.folder);"
        )

    def screenshot(self, name: str) -> None:
        """Save the window as C{docs/img/<name>} when C{KVTWIST_UI_SCREENSHOT} is set."""
        if os.environ.get(SCREENSHOT_ENV):
            os.makedirs(SCREENSHOT_DIR, exist_ok=True)
            time.sleep(0.3)  # let the debounced list refresh settle before the picture
            self.assertTrue(self.driver.save_screenshot(os.path.join(SCREENSHOT_DIR, name)))

    def allow_downloads(self) -> None:
        """Let the page download files, into a fresh C{self.downloads} directory."""
        self.downloads = tempfile.mkdtemp(prefix="kvtwist-downloads-")
        self.addCleanup(shutil.rmtree, self.downloads, True)
        self.driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": self.downloads}
        )

    def downloaded(self) -> str:
        """The one file downloaded whole (Chromium writes .crdownload until then)."""

        def done(driver):
            names = os.listdir(self.downloads)
            return names if len(names) == 1 and not names[0].endswith(".crdownload") else None

        names = self.until(done, lambda: "no download finished (%r)" % (os.listdir(self.downloads),))
        return os.path.join(self.downloads, names[0])

    def wait_live(self) -> None:
        """Wait until the watch stream is open (then no change can be missed)."""
        self.until(lambda d: self.text_of("live-state") == "live", "the live stream never opened")


class PageTests(BrowserCase):
    """The page against a server without tokens."""

    def test_browse_with_pagination(self):
        """Listing by prefix pages through every key with Next, Previous and First."""
        keys = ["browse/k%02d" % (i,) for i in range(25)]
        for key in keys:
            self.server.put_json(key, {"n": key})
        self.server.put_json("browsing-elsewhere", 1)
        self.open()
        Select(self.by_id("page-size")).select_by_visible_text("10")
        self.type_into("prefix", "browse/")
        self.click("list-go")
        self.wait_rows(keys[:10])
        self.assertIn("10 keys", self.text_of("list-status"))
        # The total is counted over every page, not the page's own count.
        self.wait_text("key-count", "25 keys under \u201cbrowse/\u201d")
        self.assertFalse(self.by_id("page-prev").is_enabled())
        self.click("page-next")
        self.wait_rows(keys[10:20])
        self.wait_text("page-label", "Page 2")
        self.click("page-next")
        self.wait_rows(keys[20:])
        self.until(lambda d: not self.by_id("page-next").is_enabled(), "Next stayed enabled on the last page")
        self.click("page-prev")
        self.wait_rows(keys[10:20])
        self.click("page-first")
        self.wait_rows(keys[:10])

    def test_view_pretty_json_and_edit(self):
        """A JSON value is shown pretty-printed; Save writes the edit with a TTL."""
        value = {"feature": {"enabled": True, "ratio": 0.25}, "tags": ["a", "b"]}
        self.server.put_json("edit/flags", value)
        self.open("edit/", flat=True)
        self.open_key("edit/flags")
        self.assertEqual(self.value_box(), json.dumps(value, indent=2))
        self.assertIn("version 1", self.text_of("edit-meta"))
        self.type_value('{"feature": {"enabled": false}}')
        self.type_into("edit-ttl", "120")
        self.click("save")
        self.wait_text("editor-message", "Saved")
        status, headers, body = self.server.request("GET", "/v1/kv/edit/flags")
        self.assertEqual(json.loads(body), {"feature": {"enabled": False}})
        self.assertEqual(headers["content-type"], "application/json")
        self.assertIn("kv-expires", headers)
        # The list follows: version 2, and an expiry shown.
        self.until(
            lambda d: "2" == d.find_element(By.CSS_SELECTOR, 'tr[data-key="edit/flags"] td.num').text,
            "the list never showed version 2",
        )

    def test_create_and_delete(self):
        """New key creates (bad JSON is refused first, writing nothing); Delete removes it."""
        self.open("create/")
        self.click("new-key")
        self.assertEqual(self.by_id("edit-key").get_attribute("value"), "create/")
        self.by_id("edit-key").send_keys("fresh")
        self.type_value("{not json")
        self.click("save")
        self.wait_text("editor-message", "not valid JSON")
        self.assertIsNone(self.server.get_json("create/fresh"))
        self.type_value('"hello"')
        self.click("save")
        self.wait_text("editor-message", "Saved")
        self.assertEqual(self.server.get_json("create/fresh"), "hello")
        self.wait_rows(["create/fresh"])
        # Creating a key that exists is refused, not an overwrite.
        self.click("new-key")
        self.by_id("edit-key").send_keys("fresh")
        self.type_value('"other"')
        self.click("save")
        self.wait_text("editor-message", "already exists")
        self.assertEqual(self.server.get_json("create/fresh"), "hello")

        self.open_key("create/fresh")
        self.click("delete")
        WebDriverWait(self.driver, WAIT).until(expected_conditions.alert_is_present())
        self.driver.switch_to.alert.accept()
        self.wait_text("editor-message", "Deleted")
        self.assertIsNone(self.server.get_json("create/fresh"))
        self.wait_rows([])

    def test_conflict_on_save(self):
        """A change behind the page's back makes Save a clear conflict, and nothing is overwritten."""
        self.server.put_json("conflict/k", {"v": 1})
        self.open("conflict/")
        self.open_key("conflict/k")
        self.server.put_json("conflict/k", {"v": "theirs"})
        self.type_value('{"v": "mine"}')
        self.click("save")
        text = self.wait_text("editor-message", "Conflict")
        self.assertIn("changed by someone else", text)
        self.assertIn("you had revision", text)
        self.assertEqual(self.server.get_json("conflict/k"), {"v": "theirs"})
        # Reload shows theirs; saving after that succeeds.
        self.click("reload")
        self.until(lambda d: '"theirs"' in self.value_box(), "Reload did not show the new value")
        self.type_value('{"v": "merged"}')
        self.click("save")
        self.wait_text("editor-message", "Saved")
        self.assertEqual(self.server.get_json("conflict/k"), {"v": "merged"})

    def test_conflict_on_delete(self):
        """Deleting a key someone changed since it was opened is refused as a conflict."""
        self.server.put_json("conflict-del/k", 1)
        self.open("conflict-del/")
        self.open_key("conflict-del/k")
        self.server.put_json("conflict-del/k", 2)
        self.click("delete")
        WebDriverWait(self.driver, WAIT).until(expected_conditions.alert_is_present())
        self.driver.switch_to.alert.accept()
        self.wait_text("editor-message", "Conflict: not deleted")
        self.assertEqual(self.server.get_json("conflict-del/k"), 2)

    def _stage_edit(self, key: str, text: str) -> None:
        self.open_key(key)
        self.type_value(text)
        self.click("stage-put")
        self.wait_text("txn-message", "Staged: put")

    def test_transaction_commit(self):
        """Two staged edits are invisible until Commit, then both are applied together."""
        self.server.put_json("txn/a", 1)
        self.server.put_json("txn/b", 2)
        self.open("txn/")
        self.assertFalse(self.by_id("stage-put").is_enabled())
        self.click("txn-begin")
        self.wait_text("txn-state", "is open")
        self._stage_edit("txn/a", "10")
        self._stage_edit("txn/b", "20")
        self.until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#txn-ops li")) == 2,
            "the staged list does not show two ops",
        )
        self.assertIn("put txn/a", self.text_of("txn-ops"))
        self.assertEqual((self.server.get_json("txn/a"), self.server.get_json("txn/b")), (1, 2))
        self.click("txn-commit")
        self.wait_text("txn-message", "Committed 2 changes")
        self.assertEqual((self.server.get_json("txn/a"), self.server.get_json("txn/b")), (10, 20))
        self.wait_text("txn-state", "No transaction open")
        self.assertTrue(self.by_id("txn-begin").is_enabled())

    def test_transaction_abort(self):
        """Abort drops the staged edits: nothing is applied."""
        self.server.put_json("abort/a", 1)
        self.open("abort/")
        self.click("txn-begin")
        self.wait_text("txn-state", "is open")
        self._stage_edit("abort/a", "99")
        self.click("stage-delete")
        self.wait_text("txn-message", "Staged: delete")
        self.click("txn-abort")
        self.wait_text("txn-message", "aborted")
        self.assertEqual(self.server.get_json("abort/a"), 1)
        self.assertEqual(self.text_of("txn-ops"), "")
        self.assertFalse(self.by_id("stage-put").is_enabled())

    def test_transaction_conflict(self):
        """A commit after someone else changed a staged key is a 409 naming that key; nothing applies."""
        self.server.put_json("txnc/a", 1)
        self.server.put_json("txnc/b", 2)
        self.open("txnc/")
        self.click("txn-begin")
        self.wait_text("txn-state", "is open")
        self._stage_edit("txnc/a", "10")
        self._stage_edit("txnc/b", "20")
        self.server.put_json("txnc/b", "theirs")
        self.click("txn-commit")
        text = self.wait_text("txn-message", "Conflict")
        self.assertIn("nothing was applied", text)
        self.assertIn("txnc/b", text)
        self.assertNotIn("txnc/a:", text)
        self.assertEqual(
            (self.server.get_json("txnc/a"), self.server.get_json("txnc/b")), (1, "theirs")
        )

    def test_live_updates(self):
        """Writes through the API appear in the live pane, and the list refreshes by itself."""
        self.open("live/")
        self.wait_live()
        self.server.put_json("live/x", {"hello": "world"})
        self.wait_text("live-log", "put live/x")
        self.wait_rows(["live/x"])
        self.server.request("DELETE", "/v1/kv/live/x")
        self.wait_text("live-log", "delete live/x")
        self.wait_rows([])
        # Keys outside the prefix are not followed.
        self.server.put_json("elsewhere/y", 1)
        self.server.put_json("live/z", 1)
        self.wait_text("live-log", "put live/z")
        self.assertNotIn("elsewhere/y", self.text_of("live-log"))

    def test_editor_follows_live_changes(self):
        """
        A change to the open key is announced at once with its revision and
        a line diff from the version opened; Save is then a conflict; a
        delete is announced too.
        """
        self.server.put_json("livewarn/k", {"a": 1, "b": 2, "c": 3})
        self.open("livewarn/")
        self.open_key("livewarn/k")
        _, headers, _ = self.server.request(
            "PUT", "/v1/kv/livewarn/k", json.dumps({"a": 1, "b": 20, "c": 3, "d": 4}).encode(),
            {"Content-Type": "application/json"},
        )
        revision = headers["etag"].strip('"')
        text = self.wait_text("editor-message", "by someone else")
        self.assertIn("now at revision %s" % (revision,), text)
        self.until(lambda d: self.by_id("editor-diff").is_displayed(), "no diff shown")
        diff = self.text_of("editor-diff").splitlines()
        self.assertIn('-   "b": 2,', diff)
        self.assertIn('+   "b": 20,', diff)
        self.assertIn('+   "d": 4', diff)
        self.assertIn('    "a": 1,', diff)
        self.screenshot("ui-live.png")
        self.type_value('{"a": "mine"}')
        self.click("save")
        self.wait_text("editor-message", "Conflict")
        self.screenshot("ui-conflict.png")
        self.server.request("DELETE", "/v1/kv/livewarn/k")
        self.wait_text("editor-message", "deleted by someone else")

    def test_line_diff(self):
        """The editor's diff keeps 3 lines around each change, folds the rest, and survives huge inputs."""
        self.open()
        result = self.driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            import("./diff.js").then(({ lineDiff, foldUnchanged }) => {
              const before = Array.from({ length: 30 }, (_, i) => "line " + i);
              const after = before.map((line, i) => (i === 15 ? "changed" : line));
              const big = Array.from({ length: 3000 }, (_, i) => "x" + i);
              done({
                folded: foldUnchanged(lineDiff(before.join("\\n"), after.join("\\n")))
                  .map((e) => e.op + (e.count === undefined ? e.line : e.count)),
                huge: lineDiff(big.join("\\n"), big.map((l) => l + "!").join("\\n")).length,
              });
            }, (error) => done(String(error)));
            """
        )
        self.assertEqual(
            result["folded"],
            ["\u202612", " line 12", " line 13", " line 14", "-line 15", "+changed",
             " line 16", " line 17", " line 18", "\u202611"],
        )
        # 3000 x 3000 lines pass the alignment bound: all removed, all added.
        self.assertEqual(result["huge"], 6000)

    def test_tree_count_find_and_delete_prefix(self):
        """
        Folders at "/" open level by level (with a path back), the total
        counts every key below, Find matches part of a name, and a prefix
        is deleted only once it is typed back.
        """
        demo = {
            "tree/app/config": {"log_level": "info", "workers": 4},
            "tree/app/feature/dark": {"enabled": True},
            "tree/app/feature/search": {"enabled": False},
            "tree/db/url": "postgres://db.internal/app",
            "tree/motd": "Welcome",
        }
        for key, value in demo.items():
            self.server.put_json(key, value)
        self.server.put_json("treeless", 1)
        self.open("tree/")
        self.until(lambda d: self.folder_names() == ["tree/app/", "tree/db/"], "no folders")
        self.wait_rows(["tree/motd"])
        self.wait_text("key-count", "5 keys under \u201ctree/\u201d")
        self.wait_text("list-status", "2 folders, 1 key")
        self.driver.find_element(By.CSS_SELECTOR, 'tr[data-folder="tree/app/"] button').click()
        self.until(lambda d: self.folder_names() == ["tree/app/feature/"], "the folder did not open")
        self.wait_rows(["tree/app/config"])
        self.wait_text("key-count", "3 keys under \u201ctree/app/\u201d")
        self.assertEqual(self.by_id("prefix").get_attribute("value"), "tree/app/")
        self.open_key("tree/app/config")
        self.screenshot("ui-tree.png")
        # Back up one level through the path.
        self.driver.find_element(By.CSS_SELECTOR, '#crumbs button[data-prefix="tree/"]').click()
        self.until(lambda d: self.folder_names() == ["tree/app/", "tree/db/"], "the path did not go back")

        self.type_into("find", "FEAT")
        self.click("find-go")
        self.wait_rows(["tree/app/feature/dark", "tree/app/feature/search"])
        self.wait_text("list-status", "2 matches")
        self.assertIn("searched all 5 keys", self.text_of("list-status"))
        self.click("find-clear")
        self.wait_rows(["tree/motd"])

        self.driver.find_element(By.CSS_SELECTOR, 'tr[data-folder="tree/app/"] button').click()
        self.wait_text("key-count", "3 keys")
        self.click("delete-prefix")
        self.wait_text("confirm-question", "3 keys")
        self.type_into("confirm-text", "tree/")
        self.assertFalse(self.by_id("confirm-delete").is_enabled())
        self.type_into("confirm-text", "tree/app/")
        self.click("confirm-delete")
        self.wait_text("keys-message", "Deleted 3 keys under \u201ctree/app/\u201d")
        self.assertIsNone(self.server.get_json("tree/app/config"))
        self.assertEqual(self.server.get_json("tree/db/url"), demo["tree/db/url"])
        self.wait_text("key-count", "0 keys")

    def test_count_and_find_say_where_they_stopped(self):
        """
        Past 10,000 keys the count says "at least", and Find says it
        searched only the first 10,000 names and lists only 200 matches.
        """
        ops = [{"op": "set", "key": "many/k%05d" % (i,), "value": i} for i in range(10_050)]
        status, _, body = self.server.request(
            "POST", "/v1/batch", json.dumps({"ops": ops}).encode(), {"Content-Type": "application/json"}
        )
        self.assertEqual(status, 200, body[:200])
        self.addCleanup(self.server.request, "DELETE", "/v1/kv/?prefix=many/")
        self.open("many/")
        self.wait_text("key-count", "At least 10,000 keys under \u201cmany/\u201d (counting stops there)")
        self.type_into("find", "k0")
        self.click("find-go")
        text = self.wait_text("list-status", "searched only the first 10,000 keys")
        self.assertIn("10,000 matches", text)
        self.assertIn("showing the first 200", text)
        self.assertEqual(len(self.row_keys()), 200)

    def test_delete_everything_needs_the_words(self):
        """At the root, Delete prefix deletes every key only once "delete everything" is typed."""
        self.server.put_json("everything/a", 1)
        self.open()
        self.click("delete-prefix")
        self.wait_text("confirm-question", "EVERY key")
        self.assertEqual(self.text_of("confirm-word"), "delete everything")
        self.assertFalse(self.by_id("confirm-delete").is_enabled())
        self.click("confirm-cancel")
        self.assertEqual(self.server.get_json("everything/a"), 1)
        self.click("delete-prefix")
        self.type_into("confirm-text", "delete everything")
        self.click("confirm-delete")
        self.wait_text("keys-message", "Deleted")
        status, _, body = self.server.request("GET", "/v1/kv/?keys=1")
        self.assertEqual(json.loads(body)["keys"], [])

    def test_history_and_restore(self):
        """
        History lists a key's versions newest first; Restore this version
        writes the old value and content type back as a new revision, and
        with a stale revision it is refused as a conflict.
        """
        self.server.request("PUT", "/v1/kv/hist/k", b"first", {"Content-Type": "text/plain; charset=utf-8"})
        self.server.put_json("hist/k", {"v": 2})
        self.server.put_json("hist/k", {"v": 3})
        self.open("hist/")
        self.open_key("hist/k")
        self.click("history-open")
        self.wait_text("history-status", "3 versions; back to its first version")
        items = self.driver.find_elements(By.CSS_SELECTOR, "#history-list li button")
        self.assertEqual(
            [item.text.split(" \u00b7 ")[0] for item in items], ["version 3", "version 2", "version 1"]
        )
        self.driver.find_element(By.CSS_SELECTOR, "#history-list li:last-child button").click()
        self.wait_text("history-meta", "Version 1")
        self.assertEqual(self.text_of("history-value"), "first")
        self.screenshot("ui-history.png")
        self.click("history-restore")
        self.wait_text("editor-message", "Restored version 1")
        status, headers, body = self.server.request("GET", "/v1/kv/hist/k")
        self.assertEqual((body, headers["content-type"], headers["kv-version"]), (b"first", "text/plain; charset=utf-8", "4"))
        self.until(lambda d: self.value_box() == "first", "the editor does not show the restored value")

        # Someone writes after the page read revision 4: restoring is a conflict.
        self.click("history-open")
        self.wait_text("history-status", "4 versions")
        self.server.put_json("hist/k", {"v": "theirs"})
        self.driver.find_element(By.CSS_SELECTOR, "#history-list li:nth-child(2) button").click()
        self.wait_text("history-meta", "Version 3")
        self.click("history-restore")
        text = self.wait_text("history-message", "Conflict: not restored")
        self.assertIn("you had revision %s" % (headers["etag"].strip('"'),), text)
        self.assertEqual(self.server.get_json("hist/k"), {"v": "theirs"})

    def test_leases_marked_and_revoked(self):
        """
        The Leases panel lists a lease with its keys; the key is marked in
        the list and the editor; Revoke (confirmed) ends the lease and its
        key is gone.
        """
        status, _, body = self.server.request(
            "POST", "/v1/lease", json.dumps({"ttl": 30}).encode(), {"Content-Type": "application/json"}
        )
        self.assertEqual(status, 201, body)
        lease = json.loads(body)["id"]
        self.addCleanup(self.server.request, "DELETE", "/v1/lease/%d" % (lease,))
        status, _, _ = self.server.request(
            "PUT", "/v1/kv/leased/worker?lease=%d" % (lease,), b'"up"', {"Content-Type": "application/json"}
        )
        self.assertEqual(status, 201)
        self.server.put_json("leased/plain", 1)
        self.open("leased/")
        self.wait_rows(["leased/plain", "leased/worker"])
        row = 'tr[data-lease="%d"]' % (lease,)
        self.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#lease-rows " + row).text.startswith(str(lease)),
            "the lease is not listed",
        )
        self.assertIn("leased/worker", self.driver.find_element(By.CSS_SELECTOR, "#lease-rows " + row).text)
        self.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#key-rows " + row).get_attribute("data-key") == "leased/worker",
            "the key is not marked",
        )
        self.assertEqual(self.driver.find_elements(By.CSS_SELECTOR, 'tr[data-key="leased/plain"] .badge'), [])
        self.open_key("leased/worker")
        self.wait_text("edit-lease", "On lease %d, " % (lease,))
        self.assertRegex(self.text_of("edit-lease"), r", \d+ s left")
        if os.environ.get(SCREENSHOT_ENV):
            self.driver.execute_script("document.getElementById('leases-title').scrollIntoView()")
        self.screenshot("ui-leases.png")

        self.driver.find_element(By.CSS_SELECTOR, "#lease-rows %s button" % (row,)).click()
        WebDriverWait(self.driver, WAIT).until(expected_conditions.alert_is_present())
        self.assertIn("Revoke lease %d?" % (lease,), self.driver.switch_to.alert.text)
        self.driver.switch_to.alert.accept()
        self.wait_text("lease-message", "Revoked lease %d" % (lease,))
        self.assertIsNone(self.server.get_json("leased/worker"))
        self.assertEqual(self.server.get_json("leased/plain"), 1)
        self.wait_rows(["leased/plain"])
        self.wait_text("lease-status", "No leases held")

    def test_tour_and_screenshot(self):
        """Everything at once: a list, a value, a staged transaction, a lease and a live log (the README's screenshot)."""
        demo = {
            "app/config": {"log_level": "info", "workers": 4, "endpoints": {"api": "/v1", "health": "/healthz"}},
            "app/feature/dark-mode": {"enabled": True, "rollout": 0.5},
            "app/feature/new-search": {"enabled": False},
            "app/jobs/nightly-report": {"state": "running", "owner": "worker-2"},
            "app/motd": "Welcome to kvtwist",
        }
        for key, value in demo.items():
            self.server.put_json(key, value, ttl=3600 if "jobs" in key else None)
        # A leader held on a lease: marked in the list, shown in the Leases panel.
        status, _, body = self.server.request(
            "POST", "/v1/lease", json.dumps({"ttl": 60}).encode(), {"Content-Type": "application/json"}
        )
        lease = json.loads(body)["id"]
        self.addCleanup(self.server.request, "DELETE", "/v1/lease/%d" % (lease,))
        self.server.request(
            "PUT", "/v1/kv/app/leader?lease=%d" % (lease,), b'"worker-1"', {"Content-Type": "application/json"}
        )
        demo["app/leader"] = "worker-1"
        self.open("app/", flat=True)
        self.wait_live()
        self.wait_rows(sorted(demo))
        self.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, '#key-rows tr[data-lease="%d"]' % (lease,)),
            "the leased key is not marked",
        )
        self.open_key("app/config")
        self.click("txn-begin")
        self.wait_text("txn-state", "is open")
        self._stage_edit("app/feature/new-search", '{"enabled": true}')
        self.open_key("app/config")
        self.server.put_json("app/feature/dark-mode", {"enabled": True, "rollout": 1.0})
        self.server.put_json("app/jobs/nightly-report", {"state": "done", "owner": "worker-2"}, ttl=3600)
        self.wait_text("live-log", "put app/jobs/nightly-report")
        self.wait_rows(sorted(demo))
        self.screenshot("ui.png")


class TransferTests(BrowserCase):
    """Export and import against a server taking at most 2 ops per batch (so an import is split)."""

    server_arguments = ("--max-batch-ops", "2")

    def setUp(self):
        super().setUp()
        self.allow_downloads()

    def test_export_clear_import(self):
        """
        Export downloads the prefix's snapshot; after the prefix is deleted,
        importing that file writes every key back (in requests of at most 2
        ops) with its bytes, content type and a TTL left of its expiry.
        """
        self.server.put_json("xfer/a", {"n": 1})
        self.server.put_json("xfer/b/c", [1, 2], ttl=600)
        self.server.request("PUT", "/v1/kv/xfer/text", b"plain words", {"Content-Type": "text/plain; charset=utf-8"})
        self.server.request("PUT", "/v1/kv/xfer/bin", bytes(range(256)), {"Content-Type": "application/octet-stream"})
        self.server.put_json("xfer/d", "dee")
        self.server.put_json("xferred", "outside the prefix")
        self.open("xfer/")
        self.click("export")
        path = self.downloaded()
        self.assertRegex(os.path.basename(path), r"^kvtwist-xfer-[0-9T-]+\.jsonl$")
        with open(path, "rb") as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual(lines[0]["snapshot"], "kvtwist")
        self.assertEqual(lines[-1], {"end": True, "keys": 5, "revision": lines[0]["revision"]})

        status, _, body = self.server.request("DELETE", "/v1/kv/?prefix=xfer/")
        self.assertEqual((status, json.loads(body)["deleted"]), (200, 5))
        self.by_id("import-file").send_keys(path)
        text = self.wait_text("import-question", "Write 5 keys")
        self.assertIn("at revision %d" % (lines[0]["revision"],), text)
        self.click("import-go")
        self.wait_text("import-status", "Imported 5 keys")
        self.assertEqual(self.server.get_json("xfer/a"), {"n": 1})
        self.assertEqual(self.server.get_json("xfer/b/c"), [1, 2])
        self.assertEqual(self.server.get_json("xfer/d"), "dee")
        _, headers, body = self.server.request("GET", "/v1/kv/xfer/text")
        self.assertEqual((body, headers["content-type"]), (b"plain words", "text/plain; charset=utf-8"))
        _, headers, body = self.server.request("GET", "/v1/kv/xfer/bin")
        self.assertEqual((body, headers["content-type"]), (bytes(range(256)), "application/octet-stream"))
        _, headers, _ = self.server.request("GET", "/v1/kv/xfer/b/c")
        self.assertIn("kv-expires", headers)
        # 5 keys at 2 ops per request: 3 commits.
        revisions = {
            self.server.request("GET", "/v1/kv/" + key)[1]["etag"]
            for key in ("xfer/a", "xfer/b/c", "xfer/bin", "xfer/d", "xfer/text")
        }
        self.assertEqual(len(revisions), 3)
        self.wait_rows(["xfer/a", "xfer/bin", "xfer/d", "xfer/text"])

    def test_import_refuses_a_cut_snapshot(self):
        """A snapshot without its end line (cut short) is refused before anything is written."""
        path = os.path.join(self.downloads, "cut.jsonl")
        with open(path, "w") as f:
            f.write('{"snapshot": "kvtwist", "format": 1, "revision": 3, "prefix": ""}\n')
            f.write('{"key": "cut/a", "content_type": "application/json", "value_base64": "MQ=="}\n')
        self.open()
        self.by_id("import-file").send_keys(path)
        self.wait_text("import-status", "no end line")
        self.assertFalse(self.by_id("import-confirm").is_displayed())
        self.assertIsNone(self.server.get_json("cut/a"))


class TokenTests(BrowserCase):
    """The page against a server that needs a bearer token."""

    token = "s3cret"

    def test_prompt_then_works(self):
        """Without a token the page prompts; a wrong one is refused; the right one is kept and used."""
        self.server.put_json("secret/a", 1)
        self.open(flat=True)
        prompt = self.by_id("auth-prompt")
        self.until(lambda d: prompt.is_displayed(), "no token prompt")
        self.assertIn("needs an access token", prompt.text)
        self.assertIn("Could not list keys", self.text_of("list-status"))
        self.assertEqual(self.driver.switch_to.active_element.get_attribute("id"), "token")

        self.by_id("token").send_keys("wrong")
        self.click("token-save")
        self.wait_text("auth-prompt", "refused")

        self.by_id("token").send_keys(self.token)
        self.click("token-save")
        self.until(lambda d: not prompt.is_displayed(), "the prompt stayed")
        self.wait_rows(["secret/a"])
        self.wait_text("key-count", "that this token may read")
        self.wait_live()
        self.assertEqual(
            self.driver.execute_script("return sessionStorage.getItem('kvtwist.token')"), self.token
        )
        # The token field never shows the secret back.
        self.assertEqual(self.by_id("token").get_attribute("value"), "")

        # Kept for the tab: a reload needs no new prompt, and writes carry it.
        self.open(flat=True)
        self.wait_rows(["secret/a"])
        self.assertFalse(self.by_id("auth-prompt").is_displayed())
        self.open_key("secret/a")
        self.type_value("2")
        self.click("save")
        self.wait_text("editor-message", "Saved")
        self.assertEqual(self.server.get_json("secret/a"), 2)

        # Export reads the snapshot with the token (a plain link could not carry it).
        self.allow_downloads()
        self.click("export")
        with open(self.downloaded(), "rb") as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual([line.get("key") for line in lines[1:-1]], ["secret/a"])
        self.wait_text("import-status", "Exported the snapshot in all")

        # Forget drops it: the next call prompts again.
        self.click("token-forget")
        self.until(lambda d: self.by_id("auth-prompt").is_displayed(), "no prompt after Forget")
        self.assertIsNone(
            self.driver.execute_script("return sessionStorage.getItem('kvtwist.token')")
        )
