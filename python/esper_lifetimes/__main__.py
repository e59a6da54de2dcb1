"""``python -m esper_lifetimes``: the command line (see :mod:`esper_lifetimes.cli`)."""

from esper_lifetimes.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
