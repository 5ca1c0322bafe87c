"""Errors that kubetune reports to people as one clear message (no traceback) and a non-zero exit."""


class KubetuneError(Exception):
    """Base class: the message must say what was wrong, where (file, line, field or URI) and what
    was expected."""
