"""The one exception type the codec raises for anything a user can cause (bad files, bad options)."""


class SiccError(Exception):
    """A failure with a message fit for one line on stderr."""
