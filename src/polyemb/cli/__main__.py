"""``python -m polyemb.cli``: the ``polyemb`` command."""

import sys

from polyemb.cli import main

sys.exit(main())
