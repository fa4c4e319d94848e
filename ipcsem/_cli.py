"""placeholder, replaced below"""
def main(argv=None): raise SystemExit("not yet")
def status_main(argv=None): raise SystemExit("not yet")
