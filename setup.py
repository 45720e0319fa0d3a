"""Build hook for the optional native CPU extension (csrc/); metadata lives in pyproject.toml."""

from setuptools import setup

setup()
