"""
End-to-end tests: a real C{twistd} (or etcd, a browser, a build) in a
subprocess, driven from the outside.
"""
