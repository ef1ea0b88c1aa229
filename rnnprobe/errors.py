"""The one exception type for user mistakes: the CLI prints its message on one line and exits 2."""


class RnnprobeError(ValueError):
    """A problem with the user's input (a path, an option, a shape), stated in one line."""
