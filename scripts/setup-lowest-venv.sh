#!/usr/bin/env bash
# Creates (or reuses) .venv-lowest: this project with every direct dependency at the LOWEST version that
# pyproject.toml allows (scripts/lowest_constraints.py turns each floor into a pin), so that the floors are
# tested facts and a dependency's behaviour change is caught on both ends of the range. The main venv
# (scripts/setup-venv.sh) takes the newest releases. torch is installed first and pinned, as everywhere.
# Idempotent: a marker records a hash of this script, the constraints script and pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_LOWEST:-.venv-lowest}
PYTHON=${PYTHON:-python3}
EXTRAS="torch,server,test,remote"
MARKER="$VENV/.pycryptotensors-lowest-setup"
STAMP=$(cat "$0" scripts/lowest_constraints.py pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -x "$VENV/bin/python" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$STAMP" ]; then
    echo "$VENV is up to date"
    exit 0
fi
rm -f "$MARKER"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
CONSTRAINTS="$VENV/lowest-constraints.txt"
"$PYTHON" scripts/lowest_constraints.py ${EXTRAS//,/ } >"$CONSTRAINTS"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -e ".[$EXTRAS]"
# Editable installs skip build hooks: add the start-up hook of transparent mode by hand (wheels ship it).
"$VENV/bin/python" -m pycryptotensors.integrations.transparent install >/dev/null
"$VENV/bin/python" - "$CONSTRAINTS" <<'PY'
import sys
from importlib.metadata import version

from packaging.specifiers import SpecifierSet

for line in open(sys.argv[1]):
    name, pinned = line.strip().split("==")
    installed = version(name)
    assert installed in SpecifierSet(f"=={pinned}"), f"{name}: {installed} installed, the floor is {pinned}"
print("lowest versions installed:", ", ".join(line.strip() for line in open(sys.argv[1])))
PY
echo "$STAMP" >"$MARKER"
