"""
The twistd dropin for C{twistd kvcache}: a pointer to L{kvtwist.tap}.
"""

from twisted.application.service import ServiceMaker

kvcache = ServiceMaker(
    "kvtwist key-value cache",
    "kvtwist.tap",
    "An HTTP key-value cache with atomic, durable commits.",
    "kvcache",
)
