"""Map the top-level folders to the ``socialsync.*`` packages, sub-packages included."""

from setuptools import find_packages, setup

ROOTS = ("daemon", "tui", "common")
packages = [f"socialsync.{p}" for root in ROOTS for p in [root, *(f"{root}.{s}" for s in find_packages(root))]]
setup(packages=packages, package_dir={f"socialsync.{root}": root for root in ROOTS})
