"""``python -m laion_hf.cli``: the ``laion-hf`` command."""

import sys

from laion_hf.cli import main

if __name__ == "__main__":  # not in spawned worker processes (laion-hf reproduce --parallel)
    sys.exit(main())
