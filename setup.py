"""Packaging is declared in setup.cfg; this only copies odiag's task and teacher YAMLs into the wheel.

``tasks/`` and ``teachers/`` sit at the top of the checkout, beside ``harness/``. A wheel carries them as
``harness/_bundled/tasks`` and ``harness/_bundled/teachers`` (`harness.config.data_dir`), so an installed
odiag has its tasks (``odiag tasks-dir`` for lm-eval) and teachers; an editable install reads the
checkout's own folders.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = {"tasks": ("*.yaml", "*.py"), "teachers": ("*.yaml",)}


class BuildWithTasksAndTeachers(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the checkout's folders are read where they are
        for source, target in self._bundled():
            self.mkpath(str(Path(target).parent))
            self.copy_file(str(source), target)

    def _bundled(self) -> list[tuple[Path, str]]:
        return [(source, str(Path(self.build_lib) / "harness" / "_bundled" / name / source.name))
                for name, patterns in BUNDLED.items() for pattern in patterns for source in sorted((ROOT / name).glob(pattern))]

    def get_outputs(self, include_bytecode=True):
        bundled = [] if getattr(self, "editable_mode", False) else [target for _, target in self._bundled()]
        return super().get_outputs(include_bytecode) + bundled


setup(cmdclass={"build_py": BuildWithTasksAndTeachers})
