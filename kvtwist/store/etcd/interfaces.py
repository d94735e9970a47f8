# -*- test-case-name: tests.test_txn_managers -*-
"""
What the etcd transaction manager (L{kvtwist.store.etcd.transactions})
uses of the etcd store, declared, so that renaming any of it fails a test
and the type check instead of a running node.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IEtcdConnection"]


class IEtcdConnection(Interface):
    """
    An etcd store's connection, as what keeps its own keys beside the
    store's data uses it: L{kvtwist.store.etcd.store.EtcdStore}, or a
    wrapper that passes these through (L{kvtwist.metrics.TimedStore}).
    """

    prefix = Attribute("The store's etcd key prefix (a str): its own keys live under it.")
    revision = Attribute("The largest etcd revision the store has seen.")
    max_request_bytes = Attribute("etcd's --max-request-bytes: the largest request sent.")

    def call(path, body, write=False):
        """
        Send one etcd v3 gateway request, failing over between endpoints.

        @return: a coroutine of the answer document.
        @raise kvtwist.store.etcd.errors.Ambiguous: a write's answer was lost.
        @raise kvtwist.store.etcd.errors.LeaseGone: a request named a lease
            etcd no longer has.
        """

    def commit_with(ops, checks, rider):
        """
        Commit C{ops} under C{checks} with C{rider}'s requests in the same
        etcd transaction (L{kvtwist.store.etcd.commits.Rider}).

        @return: a Deferred firing with the L{kvtwist.model.CommitResult}.
        @raise kvtwist.store.etcd.commits.RiderBroken: (in the Deferred) the
            rider's guard no longer held; nothing was applied.
        """
