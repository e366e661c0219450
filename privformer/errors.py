"""Exception types that privformer raises for bad input, so callers can tell them apart."""


class PrivformerError(Exception):
    """Base class of every error privformer raises on purpose."""


class ModelNotFoundError(PrivformerError):
    """A model name or folder could not be resolved to local files."""


class UnsupportedModelError(PrivformerError):
    """The model's architecture is not one a protocol supports."""


class KeyFormatError(PrivformerError):
    """A key file is missing, corrupted or of an unknown format version."""


class KeyMismatchError(PrivformerError):
    """A key was made for a different model than the one it is used with."""


class UnknownKeyError(PrivformerError):
    """A request names an evaluation-key id the server does not hold: upload the keys first."""


class InputError(PrivformerError, ValueError):
    """An input tensor or request has the wrong shape, dtype or values."""


class WireFormatError(InputError):
    """A network payload is malformed, truncated or of an unknown version."""


class PayloadTooLargeError(WireFormatError):
    """A network payload exceeds the receiver's size limit."""


class UnknownNameError(InputError):
    """A name (preset, scheme, data source, protocol, mode, model) is not one privformer knows."""


class SessionNotFoundError(PrivformerError):
    """A server session id is unknown or has expired."""


class TooManySessionsError(PrivformerError):
    """The server holds its maximum number of open sessions (or of their KV-cache memory)."""


class SequenceError(PrivformerError):
    """A session step came out of order, or reused a step number with another input."""


class ReplyTooLargeError(PrivformerError):
    """A request's reply would exceed the server's size limit."""


class ArtifactError(PrivformerError):
    """A saved artifact folder is missing, corrupted, or of another protocol or format version."""


class UnsupportedModeError(PrivformerError):
    """A protocol cannot (yet) run a model in the requested mode."""


class ServerError(PrivformerError):
    """The server answered a request with an error; the message is the server's."""

    def __init__(self, status_code: int, message: str):
        super().__init__(f"server error {status_code}: {message}")
        self.status_code = status_code
        self.message = message


class ServerUnreachableError(PrivformerError):
    """No connection to the server (refused, reset or timed out): nothing was answered."""


class PeerError(PrivformerError):
    """The other party of a two-party session ended it with an error; the message is its."""


class ServerBusyError(PrivformerError):
    """A server or dealer refused new work because a limit was reached; retry later."""


class OutOfRangeError(InputError):
    """An approximated operator got an input outside the range its approximation is valid on."""

    def __init__(self, operator: str, low: float, high: float, value: float):
        super().__init__(
            f"{operator}: input {value:.6g} is outside the valid range [{low:.6g}, {high:.6g}] "
            "of its approximation; pre-scale the input or choose a wider range"
        )
        self.operator, self.low, self.high, self.value = operator, low, high, value


class CryptoError(PrivformerError):
    """A homomorphic-encryption operation was refused."""


class InsecureParametersError(CryptoError):
    """Parameters fall short of 128-bit security (never silently accepted)."""


class ContextMismatchError(CryptoError):
    """Ciphertexts or keys from different contexts were combined."""


class LevelError(CryptoError):
    """A ciphertext has too few levels left for the operation."""


class CiphertextFormatError(CryptoError):
    """A serialized ciphertext is corrupted or belongs to another context."""


class BootstrapRangeError(CryptoError):
    """A bootstrap input exceeds the bound its caller stated (a real bootstrap returns garbage)."""


class BootstrapUnavailableError(CryptoError):
    """The backend cannot bootstrap (SEAL has no CKKS bootstrapping)."""
