"""
Packaging for kvtwist. The twistd dropin under twisted/plugins ships as part
of the C{twisted.plugins} namespace (no __init__.py there, on purpose).
"""

from setuptools import find_packages, setup

setup(
    name="kvtwist",
    version="0.1.0",
    description="A Twisted HTTP key-value cache with atomic, durable commits",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(exclude=["tests*", "benchmarks*"]) + ["twisted.plugins"],
    package_data={
        "twisted": ["plugins/kvtwist_kvcache.py"],
        # The admin page: HTML, CSS and JS modules served by GET /ui/.
        "kvtwist": ["web/static/*", "web/static/**/*"],
    },
    install_requires=[
        "twisted[tls]>=26.4.0",
        # Reads etcd client keys without ever prompting for a passphrase
        # (kvtwist.store.etcd_gateway); also the tests' certificates.
        "cryptography>=41.0",
        "treq>=24.9.1",
        "zope.interface>=6.0",
        "prometheus_client>=0.17",
        'tomli>=2.0; python_version < "3.11"',
        # The progress bar of `kvtwist load`.
        "tqdm>=4.66",
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-twisted>=1.14.3",
            # ./run.sh test runs the suite on two workers; 3.8 brought
            # --no-loadscope-reorder, which keeps the order tests/conftest.py sets.
            "pytest-xdist>=3.8.0",
            "hypothesis>=6.100",
            "jsonschema>=4.17",
            "pyyaml>=6.0",
            "openapi-spec-validator>=0.7",
            # The admin page's browser tests.
            "selenium>=4.15",
            # tests/test_packaging.py: build the sdist and wheel, check them.
            "build>=1.0",
            "twine>=5.0",
        ],
        # The plot, and --profile's py-spy (the top frames of a missed target).
        "bench": ["matplotlib>=3.7", "py-spy>=0.3.14"],
    },
    entry_points={
        "console_scripts": ["kvtwist = kvtwist.cli:run"],
        # kvtwist's fixtures (kvcache_url, ...) for downstream pytest suites.
        "pytest11": ["kvtwist = kvtwist.pytest_plugin"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
    ],
)
