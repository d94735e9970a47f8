# -*- test-case-name: tests.unit.test_ops -*-
"""
Capabilities a store wrapper passes on: a wrapper (the read cache, the
commit timer) forwards a capability's calls to the store it wraps, and
declares the capability exactly when that store provides it, so that
whoever checks it with C{providedBy} sees through the wrapper.
"""

from __future__ import annotations

from typing import Iterable

from zope.interface import alsoProvides
from zope.interface.interface import InterfaceClass


def passes_capabilities_of(wrapper: object, store: object, capabilities: Iterable[InterfaceClass]) -> None:
    """
    Declare that C{wrapper} provides each of C{capabilities} that C{store}
    provides (C{wrapper} forwards their calls to C{store}).
    """
    for capability in capabilities:
        if capability.providedBy(store):
            alsoProvides(wrapper, capability)
