"""
The HTTP face of kvtwist: a twisted.web Resource tree (L{kvtwist.web.root})
over an L{kvtwist.interfaces.IKeyValueStore}, with problem+json errors
(L{kvtwist.web.problems}) and a request type that enforces body limits
before reading (L{kvtwist.web.http}).
"""
