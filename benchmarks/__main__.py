"""
C{python -m benchmarks}: see L{benchmarks.runner.main} and C{--help}.
"""

import sys

from benchmarks.runner import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
