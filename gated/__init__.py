"""gated: edge daemon for physical access points."""

__version__ = "0.1.0"
