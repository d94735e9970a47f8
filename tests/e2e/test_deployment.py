"""
The deployment files: C{contrib/systemd/kvcache.service} passes
C{systemd-analyze verify} and its offline security review (where
systemd-analyze is installed) and keeps its sandboxing; the C{Containerfile}
runs as a non-root user with a data volume and a health check on
C{/v1/healthz}, whose command works against a real server. Building the
image needs a running container engine, which this machine lacks: that
test skips with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.e2e import http_request, start_server
from tests.helpers.paths import REPO

ROOT = REPO
UNIT = os.path.join(ROOT, "contrib", "systemd", "kvcache.service")
CONTAINERFILE = os.path.join(ROOT, "Containerfile")
#: The unit's twistd, which verify wants to exist: replaced by this venv's.
UNIT_TWISTD = "/opt/kvtwist/bin/twistd"
#: systemd-analyze security's exposure: 0 (locked down) to 10 (unsafe); it
#: rates up to 2.0 "OK".
MAX_EXPOSURE = 2.0


def unit_settings() -> Dict[str, List[str]]:
    """Every Key=value of the unit, by key (a key may repeat)."""
    settings: Dict[str, List[str]] = {}
    with open(UNIT, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", "[")):
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
    return settings


class SystemdUnitTests(SynchronousTestCase):
    """contrib/systemd/kvcache.service."""

    def testable_unit(self) -> str:
        """The unit with this venv's twistd in ExecStart, in a temporary directory."""
        if shutil.which("systemd-analyze") is None:
            self.skipTest("systemd-analyze is not installed")
        directory = tempfile.mkdtemp(prefix="kvtwist-unit-")
        self.addCleanup(shutil.rmtree, directory, True)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        with open(UNIT, encoding="utf-8") as f:
            text = f.read()
        self.assertIn(UNIT_TWISTD, text)
        path = os.path.join(directory, "kvcache.service")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(UNIT_TWISTD, twistd))
        return path

    def test_verify(self) -> None:
        """systemd-analyze verify accepts the unit without a word (it only warns on bad values)."""
        result = subprocess.run(["systemd-analyze", "verify", "--man=no", self.testable_unit()],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_security_exposure(self) -> None:
        """systemd-analyze security rates the sandbox OK (exposure 2.0 or less of 10)."""
        result = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", "--no-pager", self.testable_unit()],
            capture_output=True, text=True, timeout=60,
        )
        if "--offline" in result.stderr:
            self.skipTest("this systemd-analyze cannot review a unit file offline")
        found = re.search(r"Overall exposure level for kvcache\.service: ([0-9.]+)", result.stdout)
        self.assertIsNotNone(found, result.stdout + result.stderr)
        self.assertLessEqual(float(found.group(1)), MAX_EXPOSURE, result.stdout)

    def test_sandboxing(self) -> None:
        """
        The unit runs kvcache in the foreground as a dynamic user, with a
        state directory, a read-only system and no way to new privileges.
        """
        settings = unit_settings()
        for key, value in [("DynamicUser", "yes"), ("StateDirectory", "kvcache"),
                           ("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                           ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                           ("CapabilityBoundingSet", ""), ("KillSignal", "SIGTERM")]:
            self.assertEqual(settings.get(key), [value], key)
        command = settings["ExecStart"][0].split()
        self.assertEqual(command[:4], [UNIT_TWISTD, "--nodaemon", "--pidfile=", "kvcache"])
        self.assertIn("/var/lib/kvcache/data", command)


class ContainerfileTests(SynchronousTestCase):
    """The Containerfile."""

    def instructions(self) -> List[List[str]]:
        """Its instructions, continuation lines joined, as [NAME, rest]."""
        with open(CONTAINERFILE, encoding="utf-8") as f:
            text = re.sub(r"\\\n\s*", " ", f.read())
        return [line.split(None, 1) for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]

    def instruction(self, name: str) -> List[str]:
        return [rest for key, rest in self.instructions() if key == name]

    def test_non_root_user_and_volume(self) -> None:
        """The image runs as its own non-root user, with the data in a volume."""
        self.assertEqual(self.instruction("USER"), ["kvcache:kvcache"])
        self.assertEqual(self.instruction("VOLUME"), ['["/var/lib/kvcache"]'])
        entrypoint = json.loads(self.instruction("ENTRYPOINT")[0])
        self.assertEqual(entrypoint, ["twistd", "--nodaemon", "--pidfile=", "kvcache"])
        arguments = json.loads(self.instruction("CMD")[0])
        self.assertEqual(arguments[arguments.index("--data") + 1], "/var/lib/kvcache/data")

    def healthcheck(self) -> List[str]:
        (line,) = self.instruction("HEALTHCHECK")
        return json.loads(line[line.index("CMD ") + 4:])

    def test_healthcheck_command(self) -> None:
        """
        The HEALTHCHECK asks /v1/healthz, and its command exits 0 against a
        real server that answers there and 1 against a dead one.
        """
        command = self.healthcheck()
        self.assertIn("http://127.0.0.1:8080/v1/healthz", command[-1])
        server = start_server(self)
        if http_request(server.url, "GET", "/v1/healthz")[0] == 404:
            self.skipTest("this server does not serve /v1/healthz yet")
        code = command[-1].replace("127.0.0.1:8080", "127.0.0.1:%d" % (server.port,))
        self.assertEqual(subprocess.run([sys.executable, "-c", code], timeout=30).returncode, 0)
        server.stop()
        dead = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
        self.assertEqual(dead.returncode, 1)

    def test_build(self) -> None:
        """The image builds, where a container engine runs (none does on this machine)."""
        for tool in ("podman", "docker"):
            if shutil.which(tool) and subprocess.run(
                [tool, "info"], capture_output=True, timeout=60
            ).returncode == 0:
                break
        else:
            self.skipTest("no container engine runs here (podman or docker info fails)")
        result = subprocess.run([tool, "build", "-f", CONTAINERFILE, "-t", "kvtwist-test", ROOT],
                                capture_output=True, text=True, timeout=900)
        self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-3000:])
