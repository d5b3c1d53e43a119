"""How tests run the real ``pycryptotensors`` command, and how its errors begin."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("pycryptotensors")  # the installed console script
CLI = (
    [str(SCRIPT)]
    if SCRIPT.is_file()
    else [sys.executable, "-c", "import sys; from pycryptotensors.cli.app import main; sys.exit(main())"]
)
ERROR_PREFIX = "pycryptotensors: error:"
