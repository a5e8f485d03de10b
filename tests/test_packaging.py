"""
The installable package: a wheel built from this checkout holds the Nix
expressions and the twistd plugin, and once installed (not editable) in a
fresh virtual environment it runs both commands and finds its Nix files.

Nothing is downloaded: the wheel is built with the set-up environment's
setuptools, and the fresh environment borrows that environment's
dependencies (Twisted and the rest) through a ``.pth`` line while nixeryd
itself comes only from the wheel.
"""

from __future__ import annotations

import glob
import os
import shutil
import site
import subprocess
import sys
import zipfile
from importlib.metadata import version

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.e2e import REPOSITORY, run

#: What a wheel is built from: everything else in the checkout is not shipped.
SOURCES = ("pyproject.toml", "README.md", "nixeryd", "twisted")


def _setuptools_major() -> int:
    return int(version("setuptools").split(".")[0])


class PackagingEndToEnd(SynchronousTestCase):
    """A wheel of this checkout, built and installed as a user would."""

    def setUp(self) -> None:
        if _setuptools_major() < 77:
            raise SkipTest("needs setuptools >= 77 in the environment (dev/setup installs it)")

    def build_wheel(self) -> str:
        """Build a wheel from a copy of the checkout; its path."""
        source = os.path.abspath(self.mktemp())
        os.makedirs(source)
        for name in SOURCES:
            path = os.path.join(REPOSITORY, name)
            if os.path.isdir(path):
                shutil.copytree(path, os.path.join(source, name), ignore=shutil.ignore_patterns(
                    "__pycache__", "*.pyc", "dropin.cache"))
            else:
                shutil.copy(path, source)
        wheels = os.path.abspath(self.mktemp())
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
             "--no-build-isolation", "--no-index", "--wheel-dir", wheels, source])
        [wheel] = glob.glob(os.path.join(wheels, "nixeryd-*.whl"))
        return wheel

    def test_wheel_contents(self) -> None:
        """
        The wheel holds the Nix expressions and the plugin, and no
        ``twisted/__init__.py`` that would shadow Twisted's own.
        """
        with zipfile.ZipFile(self.build_wheel()) as wheel:
            names = set(wheel.namelist())
        nix_files = {os.path.basename(path)
                     for path in glob.glob(os.path.join(REPOSITORY, "nixeryd", "build",
                                                        "nix", "*.nix"))}
        self.assertTrue(nix_files)
        for nix_file in nix_files:
            self.assertIn("nixeryd/build/nix/" + nix_file, names)
        self.assertIn("twisted/plugins/nixeryd_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertFalse([name for name in names if name.startswith("tests/")])

    def test_installed(self) -> None:
        """
        Installed into a fresh environment, ``nixeryd`` and ``twistd
        nixery`` run, and the Nix files are found in the installed package.
        """
        wheel = self.build_wheel()
        venv = os.path.abspath(self.mktemp())
        run([sys.executable, "-m", "venv", "--without-pip", venv])
        python = os.path.join(venv, "bin", "python")
        [packages] = glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))
        with open(os.path.join(packages, "set-up-dependencies.pth"), "w") as pth:
            pth.write("\n".join(site.getsitepackages()) + "\n")
        run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
             "--no-deps", "--no-index", wheel])
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)

        def run_here(*argv: str) -> str:
            result = subprocess.run(argv, capture_output=True, text=True, env=env,
                                    cwd=cwd, timeout=60)
            self.assertEqual(result.returncode, 0, (argv, result.stdout, result.stderr))
            return result.stdout

        self.assertIn("nixeryd build [options] NAME",
                      run_here(os.path.join(venv, "bin", "nixeryd"), "--help"))
        self.assertIn("--out=", run_here(os.path.join(venv, "bin", "nixeryd"),
                                         "build", "--help"))
        self.assertIn("--pkgs-path=", run_here(
            python, "-c", "from twisted.scripts.twistd import run; run()",
            "nixery", "--help"))
        where = run_here(python, "-c", "\n".join([
            "import os, nixeryd, twisted.plugins.nixeryd_plugin as plugin",
            "from nixeryd.build.nix import default_nix_dir",
            "print(nixeryd.__file__)",
            "print(plugin.__file__)",
            "print(default_nix_dir())",
            "print(' '.join(sorted(os.listdir(default_nix_dir()))))"])).splitlines()
        package, plugin, nix_dir, nix_files = where
        for path in (package, plugin, nix_dir):
            self.assertTrue(path.startswith(packages + os.sep), path)
        self.assertIn("resolve.nix", nix_files.split())
