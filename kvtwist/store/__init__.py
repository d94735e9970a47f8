"""
Stores implementing L{kvtwist.interfaces.IKeyValueStore}: the commit rules
they share (L{kvtwist.store.rules}) and the durable shelve store on SQLite.
The in-memory store ships in L{kvtwist.testing}.
"""
