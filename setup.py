"""
The setuptools shim: kvtwist's packaging metadata lives in pyproject.toml
(PEP 621). This file stays because the project's layout names it, and for
tools that still call C{setup.py}.
"""

from setuptools import setup

setup()
