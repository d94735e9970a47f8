"""
Downstream-style tests of L{kvtwist.testing}: what a user of kvtwist writes
in their own trial and pytest-twisted suites. C{tests.e2e.test_kit} runs them
under each runner in a subprocess and checks the pass counts.
"""
