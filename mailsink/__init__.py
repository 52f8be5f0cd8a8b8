"""mailsink: a local SMTP sink that keeps the envelope apart from the headers."""

__version__ = "0.1.0"
