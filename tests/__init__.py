"""kvtwist's test suite."""
