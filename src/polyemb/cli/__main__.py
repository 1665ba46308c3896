"""``python -m polyemb.cli``: the ``polyemb`` command."""

import sys

from polyemb.cli import main

if __name__ == "__main__":  # documentation tools import every module
    sys.exit(main())
