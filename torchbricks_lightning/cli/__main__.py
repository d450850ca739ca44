"""``python -m torchbricks_lightning.cli``: the same as the ``torchbricks-lightning`` command."""

import sys

from torchbricks_lightning.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
