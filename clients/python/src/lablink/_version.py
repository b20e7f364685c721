"""The package version: the LabLink server's (Cargo.toml), kept equal by a test."""

__version__ = "0.1.0"
