"""Build hook: ship the start-up hook (pycryptotensors-transparent.pth) at the root of site-packages.

Everything else is in pyproject.toml. A .pth file is the one standard way to run code at interpreter start,
which transparent loading needs (docs/INTEGRATIONS.md).
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "pycryptotensors-transparent.pth"


class BuildPyWithStartupHook(build_py):
    def run(self) -> None:
        super().run()
        shutil.copy(os.path.join("src", PTH), os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": BuildPyWithStartupHook})
