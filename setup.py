"""Packaging shim: all metadata and settings live in setup.cfg."""
from setuptools import setup

setup()
