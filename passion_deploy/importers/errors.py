"""The one error every importer raises."""


class ImportRefused(ValueError):
    """A foreign file or config that cannot be imported; the message is one sentence naming the
    file (and the key or tensor) and the problem."""
