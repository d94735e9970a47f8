"""The kvtwist command line (placeholder, filled in below)."""
def run():
    raise SystemExit("not yet")
