"""
Tests of one module in memory (a few also start one C{twistd} for that
module's command-line face).
"""
