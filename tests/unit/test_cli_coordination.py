# -*- test-case-name: tests.unit.test_cli_coordination -*-
"""
The C{kvtwist lease} subcommands in memory (C{lock} and C{elect} spawn and
wait on real processes: they are tested end to end in
L{tests.e2e.test_e2e_coordination}).
"""

from __future__ import annotations

import json

from kvtwist.model import Put
from tests.helpers.cli import CLITestCase


class LeaseCommandTests(CLITestCase):
    """kvtwist lease grant|keepalive|show|revoke."""

    def test_grant_show_keepalive_revoke(self) -> None:
        """grant prints the lease, show its keys, keepalive renews it, revoke deletes its keys."""
        out, _ = self.cli("lease", "grant", "30")
        granted = json.loads(out)
        self.assertEqual(granted["ttl"], 30)
        lease = granted["id"]
        self.successResultOf(self.store.commit([Put("svc/a", b"up", lease=lease)]))
        shown = json.loads(self.cli("lease", "show", str(lease))[0])
        self.assertEqual((shown["keys"], shown["remaining"]), (["svc/a"], 30))
        self.assertEqual(json.loads(self.cli("lease", "keepalive", str(lease))[0]), {"id": lease, "ttl": 30})
        self.assertEqual(json.loads(self.cli("lease", "revoke", str(lease))[0]), {"id": lease, "revoked": True})
        self.assertEqual(self.store.rows, {})
        _, err = self.cli("lease", "show", str(lease), code=1)
        self.assertIn("lease-not-found", err)

    def test_text_output_and_usage(self) -> None:
        """-o text prints a granted lease's id alone; a bad ttl or id is a usage error (exit 2)."""
        out, _ = self.cli("-o", "text", "lease", "grant", "5")
        self.assertTrue(out.strip().isdigit())
        self.cli("lease", "grant", "0", code=2)
        self.cli("lease", "show", "abc", code=2)
        self.cli("lease", "renew", "5", code=2)
