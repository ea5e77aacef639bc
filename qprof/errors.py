"""The one exception type that the CLI turns into a one-line error message."""


class QprofError(Exception):
    """A user-facing failure: bad input, missing GPU or tool, unsupported type.

    The message must fit on one line and name the problem (and the file or
    tensor concerned); the CLI prints it as `qprof: error: <message>` and exits 2.
    """


class UnsupportedError(QprofError):
    """An architecture, tensor type or feature qprof does not handle."""


class MalformedModelError(QprofError):
    """A GGUF file that is truncated, inconsistent or otherwise invalid."""
