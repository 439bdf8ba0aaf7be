"""The one error every importer raises."""

from ..errors import PassionError


class ImportRefused(PassionError):
    """A foreign file or config that cannot be imported; the message is one sentence naming the
    file (and the key or tensor) and the problem."""
