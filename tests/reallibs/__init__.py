"""Tests on checkpoints written by torchvision, timm and transformers themselves (see conftest.py).

A package, so that this folder's conftest.py is imported as ``reallibs.conftest`` and never
shadows ``tests/conftest.py`` for the ``from conftest import ...`` lines of the other tests."""
