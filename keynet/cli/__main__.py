"""``python -m keynet.cli ...`` (and ``torchrun ... -m keynet.cli train ...``): the ``keynet`` command."""

import sys

from . import main

sys.exit(main())
