"""``python -m ckptlint``: the same as the ``ckptlint`` command."""

import sys

from ckptlint.cli import main

sys.exit(main())
