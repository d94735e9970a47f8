"""
What clients do with a transaction, over a store: read through it, stage
JSON pairs, stage deletes, stage one value with preconditions.

The seed routes use these on the shared queue (a non-isolated
L{Transaction}); the v1 transaction routes use them on a client's own
transaction. One way to stage and commit, not two.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from kvtwist.errors import KeyNotFound, LimitExceeded
from kvtwist.interfaces import IKeyValueStore
from kvtwist.limits import Limits
from kvtwist.model import JSON_CONTENT_TYPE, Check, Delete, Entry, Put
from kvtwist.strictjson import check_key, encode
from kvtwist.transactions import Transaction


def check_key_count(limits: Limits, count: int) -> None:
    """
    @raise LimitExceeded: if one request names more keys than allowed.
    """
    if count > limits.max_keys_per_request:
        raise LimitExceeded("max_keys_per_request", limits.max_keys_per_request, count)


async def observe(store: IKeyValueStore, txn: Transaction, keys: Iterable[str]) -> Dict[str, Entry]:
    """
    Read the committed state of C{keys}, record it in C{txn} for the keys it
    touches for the first time, and return the live entries found.
    """
    found = await store.get_many(list(dict.fromkeys(keys)))
    for key in keys:
        txn.observe(key, found.get(key))
    return found


async def read(
    store: IKeyValueStore, txn: Transaction, key: str
) -> Union[Put, Entry, None]:
    """
    Read C{key} as C{txn} sees it: its staged op over the committed state.

    @return: the staged L{Put}, or the committed L{Entry}, or L{None} when
        the key is absent or its delete is staged.
    """
    staged = txn.staged(key)
    if isinstance(staged, Put):
        return staged
    if isinstance(staged, Delete):
        return None
    entry = await store.get(key)
    txn.observe(key, entry)
    return entry


async def stage_pairs(
    store: IKeyValueStore, txn: Transaction, pairs: Dict[str, Any], limits: Limits
) -> Dict[str, str]:
    """
    Stage a JSON value for each key of C{pairs} (the seed's C{/set} shape).

    @return: C{{key: "created" | "updated"}}, by whether the key exists in
        the committed store.
    @raise kvtwist.errors.InvalidInput: for a bad key; nothing is staged.
    @raise LimitExceeded: past a limit; nothing is staged.
    """
    check_key_count(limits, len(pairs))
    ops = [Put(check_key(key), encode(value), JSON_CONTENT_TYPE) for key, value in pairs.items()]
    committed = await observe(store, txn, pairs)
    txn.stage(ops)
    return {key: "updated" if key in committed else "created" for key in pairs}


async def stage_deletes(
    store: IKeyValueStore, txn: Transaction, keys: Sequence[str], limits: Limits
) -> Dict[str, str]:
    """
    Stage a delete of each of C{keys}.

    @return: C{{key: "deleted"}}.
    @raise KeyNotFound: naming every key that is neither committed nor
        staged as a write; nothing is staged then.
    """
    check_key_count(limits, len(keys))
    for key in keys:
        check_key(key)
    committed = await observe(store, txn, keys)
    missing: List[str] = []
    for key in dict.fromkeys(keys):
        staged = txn.staged(key)
        # A transaction sees its own staged delete (the key is gone for it);
        # the seed's shared queue only asked "committed or staged".
        hidden = isinstance(staged, Delete) and txn.isolated
        exists = isinstance(staged, Put) or (key in committed and not hidden)
        if not exists:
            missing.append(key)
    if missing:
        raise KeyNotFound(missing)
    txn.stage(Delete(key) for key in keys)
    return {key: "deleted" for key in keys}


async def stage_put(
    store: IKeyValueStore,
    txn: Transaction,
    put: Put,
    preconditions: Sequence[Check] = (),
) -> Optional[Entry]:
    """
    Stage one write, recording C{preconditions} for the commit.

    @return: the committed entry the write will replace, if any.
    """
    found = await observe(store, txn, [put.key])
    txn.stage([put], preconditions)
    return found.get(put.key)
