"""``python -m laion_hf.cli``: the ``laion-hf`` command."""

import sys

from laion_hf.cli import main

sys.exit(main())
