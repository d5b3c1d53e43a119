"""``python -m pycryptotensors``: the same command as ``pycryptotensors``."""

import sys

from .cli.app import main

sys.exit(main())
