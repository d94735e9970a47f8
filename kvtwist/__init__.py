"""
kvtwist: a Twisted HTTP key-value cache service with durable, atomic commits.

Run it with ``twistd -n kvcache``; script it with L{kvtwist.client}; test
against it with L{kvtwist.testing}.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
