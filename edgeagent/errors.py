"""The whole exception hierarchy of edgeagent.

Every error the agent or the CLI raises on purpose is a subclass of `EdgeAgentError`.
Foreign exceptions are wrapped once, at the adapter boundary (``raise X(...) from exc``).
Programming errors (out-of-order calls, impossible states) are `RuntimeError` or
`AssertionError` and are deliberately not part of this hierarchy.

This module holds no logic besides message formatting.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Root of every error edgeagent raises on purpose."""


class ConfigError(EdgeAgentError):
    """A config, recipe or policy file is malformed (names the file and the field)."""


class FetchError(EdgeAgentError):
    """A network fetch failed: connection, HTTP status, timeout or slow retrieval."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


class TooLargeError(FetchError):
    """The server sent more bytes than allowed (size cap or signed length: endless data)."""


class SlowRetrievalError(FetchError):
    """The server sent bytes more slowly than the minimum throughput allows."""


class VerificationError(EdgeAgentError):
    """An artefact or metadata file failed a trust check. Never retried blindly."""


class SignatureError(VerificationError):
    """Too few valid signatures from trusted keys (threshold not met)."""


class DigestMismatchError(VerificationError):
    """Bytes do not match the signed length or hashes."""


class RollbackError(VerificationError):
    """A metadata version (or target version) older than one already trusted."""


class ExpiredError(VerificationError):
    """Metadata expired according to the device's trusted clock (freeze attack)."""


class StoreError(EdgeAgentError):
    """The content-addressed store could not be read or written."""


class SigningKeyError(EdgeAgentError):
    """Publisher: too few private keys present to meet a role's threshold (names the key files)."""


class RecipeError(ConfigError):
    """An image recipe (recipe.toml) is malformed."""


class BuildError(EdgeAgentError):
    """An image build failed (compiler, linker or reproducibility check)."""


class VmError(EdgeAgentError):
    """A guest could not be started or ended badly."""


class KvmUnavailableError(VmError):
    """/dev/kvm is missing or not read-write."""


class ImageFormatError(VmError):
    """A file is not a bootable image of a known format (names the file and what was expected)."""


class VmExitedError(VmError):
    """A guest exited with a status that is not success."""

    def __init__(self, message: str, *, status: int, console_tail: str = ""):
        super().__init__(message)
        self.status = status
        self.console_tail = console_tail


class VmUnhealthyError(VmError):
    """A guest missed its heartbeat deadline or failed its probe."""


class DomainCollisionError(VmError):
    """A Xen domain with the name the agent needs exists and was not created by it (ADR 0012)."""


class OtaError(EdgeAgentError):
    """An over-the-air update could not proceed."""


class FlashError(EdgeAgentError):
    """Writing an image to a device failed."""


class UnsafeTargetError(FlashError):
    """The chosen flash target is unsafe (mounted, not removable, holds the running system)."""


class ControlError(EdgeAgentError):
    """An operator action (console or HTTP) was refused: bad argument, nothing to do, busy."""


class UnknownWorkloadError(ControlError):
    """An operator action named a workload the agent does not know (names it)."""
