"""Bearer API keys for model endpoints: from KILN_API_KEYS (comma separated), KILN_API_KEYS_FILE
or the application's `api_keys_file` (one key per line). No keys: the endpoints are open, and
the replica says so when it starts."""

import hmac
from pathlib import Path
from typing import Any

from fastapi import Depends, HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kiln.errors import ServeError
from kiln.settings import get_settings

bearer = HTTPBearer(auto_error=False, description="an API key, when the server has any")


class ApiKeys:
    def __init__(self, keys: list[str]):
        self.keys = [k.encode() for k in keys if k]

    @classmethod
    def load(cls, file: str | None = None) -> "ApiKeys":
        settings = get_settings()
        keys = (settings.api_keys or "").split(",")
        for path in filter(None, (settings.api_keys_file, file)):
            try:
                keys += Path(path).read_text().split()
            except OSError as e:
                raise ServeError(f"cannot read API keys from {path}: {e.strerror}") from None
        return cls([k.strip() for k in keys])

    @property
    def required(self) -> list[Any]:
        """A route's `dependencies=` that answer 401 without one of the keys (none when the
        endpoint is open: a dependency costs CPU on every request)."""
        return [] if self.open else [Depends(self.require)]

    @property
    def open(self) -> bool:
        return not self.keys

    def matches(self, given: str) -> bool:
        # Constant time per key, and every key compared: timing says nothing about the keys.
        candidate = given.encode()
        return sum(hmac.compare_digest(candidate, key) for key in self.keys) > 0

    async def require(
        self, credentials: HTTPAuthorizationCredentials | None = Security(bearer)
    ) -> None:
        """A FastAPI dependency: 401 unless the request carries one of the keys. Async, so
        that FastAPI runs it in the event loop instead of handing it to a worker thread."""
        if credentials is None or not self.matches(credentials.credentials):
            raise HTTPException(
                401,
                "a valid API key is required: Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
