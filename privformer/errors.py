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


class InputError(PrivformerError):
    """An input tensor or request has the wrong shape, dtype or values."""


class WireFormatError(InputError):
    """A network payload is malformed, truncated or of an unknown version."""


class ServerError(PrivformerError):
    """The server answered a request with an error; the message is the server's."""

    def __init__(self, status_code: int, message: str):
        super().__init__(f"server error {status_code}: {message}")
        self.status_code = status_code
        self.message = message
