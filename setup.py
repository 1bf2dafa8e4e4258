"""Package discovery for the `umt` namespace (metadata lives in pyproject.toml).

The top-level folders engine/, loaders/ and cache/ install as umt.engine, umt.loaders and umt.cache.
setuptools' discovery in pyproject.toml cannot prefix the names it finds, so the prefix is added here:
every folder with an __init__.py below those three is a package, and no bare top-level package lands
in site-packages.
"""
from setuptools import find_packages, setup

TOP = ("engine", "loaders", "cache")

setup(packages=[f"umt.{name}" for name in find_packages(include=[f"{top}{tail}" for top in TOP for tail in ("", ".*")])],
      package_dir={f"umt.{top}": top for top in TOP})
