"""`VixOperationError`: a guest operation that failed, with the Vix code the guest answers."""

from __future__ import annotations

from ..codecs.vix import code_name, errno_code


class VixOperationError(Exception):
    """A guest operation failed: ``code`` is the Vix error, ``errno`` the OS error behind it (0 if none)."""

    def __init__(self, code: int, message: str = "", errno: int = 0) -> None:
        super().__init__(message or code_name(code))
        self.code = int(code)
        self.errno = errno

    @classmethod
    def from_os_error(cls, error: OSError) -> VixOperationError:
        return cls(errno_code(error.errno), str(error), error.errno or 0)
