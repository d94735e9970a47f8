# -*- test-case-name: tests.e2e.test_hostile_staging -*-
"""
A hostile client against the real C{twistd kvcache} that opens many
transactions and stages big values in each: the process's memory must stay
bounded by C{--max-staged-bytes-total}, not by C{max_open_transactions}
times C{max_staged_bytes}.

The server runs with a small total (16 MiB) so the attack is quick: 20
transactions of eight 1 MiB values would stage 160 MiB without it. RSS is
read from C{/proc/PID/status} before and at the peak of the attack.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.e2e import connect, http_request, rss_kib, start_server

MiB = 1024 * 1024
TOTAL = 16 * MiB
TRANSACTIONS = 20
VALUES_PER_TRANSACTION = 8
#: RSS may grow by the staged total, plus room for the allocator's slack
#: and the request being parsed; without the total it grows by ~160 MiB.
RSS_GROWTH_BOUND_KIB = 48 * 1024


class StagedMemoryAttackTests(SynchronousTestCase):
    """Many transactions staging 1 MiB values against a small staged total."""

    def test_many_transactions_of_big_values_stay_bounded(self):
        """RSS grows by less than 48 MiB while 160 MiB is offered; past the total, 503 staged-memory-full; aborting frees it."""
        server = start_server(
            self,
            extra_args=[
                "--max-staged-bytes-total", str(TOTAL),
                "--max-body", str(2 * MiB),
                "--access-log", "off",
            ],
        )
        url = server.url
        connection = connect(url, timeout=10.0)
        self.addCleanup(connection.close)
        value = b"x" * MiB

        def request(method, path, body=None):
            return http_request(url, method, path, body, connection=connection)

        def begin():
            status, _, body = request("POST", "/v1/txn")
            self.assertEqual(status, 201, body)
            return "/v1/txn/" + json.loads(body)["id"]

        # Warm up the paths a staged 1 MiB PUT takes, then measure.
        warm = begin()
        self.assertEqual(request("PUT", warm + "/kv/warm", value)[0], 200)
        self.assertEqual(request("DELETE", warm)[0], 204)
        before = rss_kib(server.process.pid)

        transactions = [begin() for _ in range(TRANSACTIONS)]
        answers = {}
        for txn in transactions:
            for i in range(VALUES_PER_TRANSACTION):
                status, _, body = request("PUT", "%s/kv/v%d" % (txn, i), value)
                answers[status] = body
        peak = rss_kib(server.process.pid)

        self.assertEqual(sorted(answers), [200, 503])
        problem = json.loads(answers[503])
        self.assertEqual((problem["code"], problem["limit"]), ("staged-memory-full", TOTAL))
        growth = peak - before
        print("\nRSS growth staging %d x %d x 1 MiB under a %d MiB total: %.1f MiB"
              % (TRANSACTIONS, VALUES_PER_TRANSACTION, TOTAL // MiB, growth / 1024))
        self.assertLess(growth, RSS_GROWTH_BOUND_KIB)

        # Aborting gives the memory back to staging.
        for txn in transactions:
            self.assertEqual(request("DELETE", txn)[0], 204)
        self.assertEqual(request("PUT", begin() + "/kv/after", value)[0], 200)
