"""The errors of artifact storage (`components.common.storage` and the modules under it)."""

from __future__ import annotations

from components.common.errors import KubetuneError


class StorageError(KubetuneError):
    """An artifact could not be stored or fetched."""


class NotFound(StorageError):
    """Missing bucket, key, local path or manifest."""


class AccessDenied(StorageError):
    """403, bad credentials or a signature mismatch."""


class EndpointUnreachable(StorageError):
    """Connection refused, DNS failure or timeout; the message names the endpoint URL."""


class HashMismatch(StorageError):
    """A file's content does not match the sha256 its manifest or metadata promised."""
