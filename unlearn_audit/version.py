"""The tool's version, in one place (the package, the record and the result cache's keys read it here)."""

__version__ = "0.1.0"
