"""The command line: the parser (``python -m breasttumorseg``) and one function per command."""

# The installed console script is ``breasttumorseg.cli:main`` (pyproject.toml); keep that name working.
from .main import main

__all__ = ["main"]
