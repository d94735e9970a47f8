# -*- test-case-name: tests.contract.test_store_etcd -*-
"""
The etcd store: kvtwist's store contract, its history, client leases and
transactions on an etcd v3 cluster that several kvcache nodes share. One
module per concept:

 - L{kvtwist.store.etcd.store}: C{EtcdStore}, opening, reads, and the
   contract's entry points;
 - L{kvtwist.store.etcd.commits}: commits as etcd transactions, expiry
   leases, the C{Rider} of a transaction's staged state;
 - L{kvtwist.store.etcd.delivery}: listeners hear revisions in order;
 - L{kvtwist.store.etcd.watchloop}: the watch, its restarts and resets;
 - L{kvtwist.store.etcd.stream}: one watch answer, read line by line;
 - L{kvtwist.store.etcd.history}: reads at past revisions, compaction,
   replay;
 - L{kvtwist.store.etcd.leases}: client leases as etcd leases;
 - L{kvtwist.store.etcd.transactions}: transactions and the seed's queue
   kept in etcd, through L{kvtwist.interfaces.IEtcdConnection};
 - L{kvtwist.store.etcd.gateway}: the HTTP client of etcd's JSON gateway,
   with failover; L{kvtwist.store.etcd.tls}: its TLS and credentials;
 - L{kvtwist.store.etcd.codec}: base64, the key layout, the value
   envelope; L{kvtwist.store.etcd.errors}: what can go wrong.

docs/etcd.md describes the design.
"""
