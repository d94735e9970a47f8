"""Support modules for the tests: no tests of their own."""
