"""The one small error hierarchy of gated; each boundary translates and chains into it."""


class GatedError(Exception):
    """Base of every error gated raises on purpose."""


class ConfigError(GatedError):
    """The configuration (file, key or value) is invalid; the message names the key path."""


class RulesError(GatedError):
    """A rule-set file or change is invalid; nothing was changed."""


class JournalError(GatedError):
    """The journal cannot be opened, written or verified."""


class HardwareError(GatedError):
    """A relay, input, port or camera failed or is missing."""


class PayloadError(GatedError):
    """A camera payload, serial frame or message could not be parsed; it was dropped."""


class SyncError(GatedError):
    """An upstream transport failed."""


class StateError(GatedError):
    """A file or directory gated keeps its state in cannot be created or written."""
