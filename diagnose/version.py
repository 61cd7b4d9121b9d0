"""The package version, in a leaf module: read by the CLI, the report and the build (pyproject.toml)."""

__version__ = "0.1.0"
