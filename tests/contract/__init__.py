"""
The store and transaction-manager contracts (L{store_contract},
L{txn_contract}) and the test modules that run them against each store.
"""
