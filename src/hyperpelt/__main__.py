"""``python -m hyperpelt ...`` is the ``hyperpelt`` command."""

from hyperpelt.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
