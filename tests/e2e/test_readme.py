"""
The README's walk-through ("The API in one screen") runs as written: its
shell blocks are taken from the README, run in order by bash with curl
against a fresh C{twistd kvcache} on a free port, and each answer is
checked against the comment beside its command (the status it starts
with, the body when it gives it as JSON, and any C{ETag: "N"},
C{KV-Revision: N} or C{"revision": N} it names), so the README cannot drift from the server again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.e2e import start_server, temp_dir
from tests.helpers.paths import REPO

ROOT = REPO
README = os.path.join(ROOT, "README.md")
SECTION = "## The API in one screen"
#: Seconds each curl may take: the long-poll and the event stream of the
#: walk-through never end by themselves, and are cut off after this.
CURL_SECONDS = 2


@dataclass
class Command:
    """One command of the walk-through and what its comment claims."""

    text: str
    comment: str = ""

    def expected_status(self) -> Optional[int]:
        found = re.match(r"(\d{3})\b", self.comment)
        return int(found.group(1)) if found else None

    def expected_body(self) -> Tuple[bool, object]:
        """C{(True, value)} if the comment gives the body as JSON after the status."""
        found = re.match(r"\d{3} (.+)", self.comment)
        if found:
            try:
                return True, json.JSONDecoder().raw_decode(found.group(1))[0]
            except ValueError:
                pass
        return False, None

    def claims(self) -> Dict[str, int]:
        """The revisions the comment names: etag, kv-revision, revision (in the body)."""
        claims = {}
        for name, pattern in (("etag", r'ETag: "(\d+)"'), ("kv-revision", r"KV-Revision: (\d+)"),
                              ("revision", r'\{"revision": (\d+)')):
            found = re.search(pattern, self.comment)
            if found:
                claims[name] = int(found.group(1))
        return claims


def _split_comment(line: str) -> Tuple[str, str]:
    """C{(code, comment)}: the comment starts at a C{#} after a space, outside quotes."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip(), line[index + 1:].strip()
    return line.rstrip(), ""


def _complete(text: str) -> bool:
    try:
        shlex.split(text)
    except ValueError:
        return False  # an open quote: the command goes on on the next line
    return True


def walkthrough() -> List[Command]:
    """The commands of the README's walk-through, in order, with their comments."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start = text.index(SECTION)
    end = text.find("\n## ", start + 1)
    section = text[start:end].split("\n### ")[0]
    commands: List[Command] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        pending = ""
        for line in block.splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                if line[:1].isspace() and line.strip() and commands:
                    # An indented comment line speaks of the command above.
                    commands[-1].comment = line.strip()[1:].strip()
                continue
            candidate = pending + "\n" + line if pending else line
            code, comment = _split_comment(candidate)
            if _complete(code):
                commands.append(Command(code, comment))
                pending = ""
            else:
                pending = candidate
        assert not pending, "an unfinished command in the README: %r" % (pending,)
    return commands


class ReadmeWalkthroughTests(SynchronousTestCase):
    """The README's curl walk-through against a real server."""

    def test_walkthrough(self) -> None:
        """Every command of the walk-through answers what its comment says, in order."""
        if shutil.which("curl") is None or shutil.which("bash") is None:
            self.skipTest("the walk-through needs curl and bash")
        commands = walkthrough()
        self.assertGreaterEqual(len(commands), 18)
        server = start_server(self)
        workdir = temp_dir(self, "readme")
        script = [
            "set -u",
            # Each curl records its answer's headers and body, and still
            # writes the body to stdout for T=$(curl ...).
            'curl() { command curl -sS --max-time %d -D "$W/head.$I" "$@" | tee "$W/body.$I"; }'
            % (CURL_SECONDS,),
        ]
        for index, command in enumerate(commands):
            text = command.text.replace("localhost:8080", "127.0.0.1:%d" % (server.port,))
            script.append("I=%d" % (index,))
            script.append(text)
        result = subprocess.run(["bash", "-c", "\n".join(script)], env=dict(os.environ, W=workdir),
                                capture_output=True, text=True, timeout=120)
        checked = 0
        for index, command in enumerate(commands):
            status, headers, body = self.answer(workdir, index)
            where = "README command %d: %s\n(answer %s %r)" % (index, command.text, status, body[:300])
            expected = command.expected_status()
            if expected is not None:
                self.assertEqual(status, expected, where)
                checked += 1
            given, value = command.expected_body()
            if given:
                self.assertEqual(self.json_of(body, where), value, where)
            for name, value in command.claims().items():
                if name == "revision":
                    self.assertEqual(self.json_of(body, where).get("revision"), value, where)
                else:
                    self.assertEqual(headers.get(name), '"%d"' % value if name == "etag"
                                     else str(value), where)
        self.assertGreaterEqual(checked, 14, result.stderr)

    def test_values_are_sent_as_bytes(self) -> None:
        """
        Every PUT of the walk-through sends its value with --data-binary:
        curl's -d would store it as application/x-www-form-urlencoded.
        """
        puts = [c.text for c in walkthrough() if "-X PUT" in c.text]
        self.assertGreaterEqual(len(puts), 4)
        for text in puts:
            words = shlex.split(text)
            self.assertNotIn("-d", words, text)
            self.assertIn("--data-binary", words, text)

    def json_of(self, body: str, where: str) -> object:
        try:
            return json.loads(body)
        except ValueError:
            self.fail("not JSON: " + where)

    def answer(self, workdir: str, index: int) -> Tuple[Optional[int], Dict[str, str], str]:
        """The status, headers (lower-case names) and body of command C{index}."""
        try:
            with open(os.path.join(workdir, "head.%d" % index), encoding="latin-1", newline="") as f:
                head = f.read()
            with open(os.path.join(workdir, "body.%d" % index), encoding="utf-8", newline="") as f:
                body = f.read()
        except OSError:
            return None, {}, ""
        # With -i the head is in the body too: keep what follows it.
        if body.startswith("HTTP/"):
            body = body.split("\r\n\r\n", 1)[-1]
        lines = head.split("\r\n")
        found = re.match(r"HTTP/\S+ (\d{3})", lines[0])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if value:
                headers[name.strip().lower()] = value.strip()
        return (int(found.group(1)) if found else None), headers, body
