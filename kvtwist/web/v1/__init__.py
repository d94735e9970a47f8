"""
The v1 API: keys under C{/v1/kv/} with revisions and CAS, prefix listing,
per-client multi-request transactions (C{/v1/txn}) and one-request batches
(C{/v1/batch}). Every answer carries C{KV-Revision}; wrong methods are 405
with C{Allow}.
"""
