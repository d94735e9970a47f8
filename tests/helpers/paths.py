"""
Where the checkout is, for tests that read its files (docs, examples,
benchmarks) or run commands in it.
"""

import os

#: The root of the source checkout: the directory holding C{tests/}.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
