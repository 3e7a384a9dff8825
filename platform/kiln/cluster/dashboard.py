"""A cluster's dashboard, which serves Ray's Jobs, Serve and State REST APIs: where it is, the
token it wants, and one line for each way a call to it fails.

    client = open_client(JobSubmissionClient, "http://127.0.0.1:8265")
    with answered_by(address):
        client.list_jobs()
"""

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kiln.errors import ClusterError, KilnError

C = TypeVar("C")

TOKEN_HELP = (
    "set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it, or write it to "
    "~/.ray/auth_token (on the head node, `ray get-auth-token` prints it)"
)


@dataclass(frozen=True)
class Token:
    value: str
    source: str


def find_token() -> Token | None:
    """The cluster token, found where Ray looks: RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH
    names, then ~/.ray/auth_token."""
    if value := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return Token(value, "RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        value = path.read_text().strip()
    except OSError:
        return None
    return Token(value, str(path)) if value else None


def auth_headers() -> dict[str, str]:
    """Sent whether or not this process runs Ray with RAY_AUTH_MODE=token: a cluster without
    token auth ignores it, one with it needs it."""
    token = find_token()
    return {"Authorization": f"Bearer {token.value}"} if token else {}


def with_scheme(address: str) -> str:
    """HOST:PORT as http://HOST:PORT; a URL as it is."""
    return address if "://" in address else f"http://{address}"


def open_client(client_class: type[C], address: str) -> C:
    """A Ray SDK client (JobSubmissionClient, ServeSubmissionClient, StateApiClient) with the
    token; each checks the address when it is created."""
    headers = {"Content-Type": "application/json", **auth_headers()}
    with answered_by(address):
        return _answering_in_time(client_class)(address, headers=headers)


# (connect, read) seconds. Ray's SDK clients send their requests without a timeout: a dashboard
# that takes the connection and never answers (its module processes gone) hung the command.
REQUEST_TIMEOUT_S = (10.0, 120.0)


def _answering_in_time(client_class: type[C]) -> Any:
    """`client_class` whose every request has REQUEST_TIMEOUT_S."""

    class Timed(client_class):  # type: ignore[valid-type,misc]
        def _do_request(self, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", REQUEST_TIMEOUT_S)
            return super()._do_request(*args, **kwargs)

    Timed.__name__ = Timed.__qualname__ = client_class.__name__
    return Timed


@contextlib.contextmanager
def answered_by(address: str) -> Iterator[None]:
    """Ray's errors (often whole remote tracebacks) as one line that says what to do."""
    try:
        yield
    except KilnError:
        raise
    except Exception as e:
        raise ClusterError(describe(e, address)) from None


def describe(e: BaseException, address: str) -> str:
    text = str(e)
    if "Authentication required" in text or "status code 401" in text:
        return f"the cluster at {address} needs a token (Ray token authentication): {TOKEN_HELP}"
    if "Authentication failed" in text or "status code 403" in text:
        token = find_token()
        source = f" from {token.source}" if token else ""
        return f"the cluster at {address} refused the token{source}: it is not this cluster's"
    from requests.exceptions import ReadTimeout  # Ray's SDK clients send with requests

    if isinstance(e, ReadTimeout):  # the dashboard took the request but never answered
        return (
            f"the Ray dashboard at {address} did not answer within {REQUEST_TIMEOUT_S[1]:g} s "
            "(is its head node overloaded, or its dashboard stopped? `ray status` on the head)"
        )
    if isinstance(e, ConnectionError) or "Failed to connect" in text:
        return (
            f"cannot reach a Ray dashboard at {address}: is the cluster up, and is this its "
            "dashboard address (http://HEAD:8265 by default)?"
        )
    return first_line(e)


def first_line(e: BaseException) -> str:
    """The line of a Ray error (often a whole remote traceback) that says what went wrong."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if bound := [line for line in lines if "cannot bind" in line or "already in use" in line]:
        return f"a port is in use (is another Ray Serve or HAProxy running?): {bound[0]}"
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", line)]
    return (raised or lines or [type(e).__name__])[-1][:500]


def alive_nodes(address: str) -> list[dict[str, Any]]:
    """The cluster's live nodes as the State API sees them (resources_total, is_head_node)."""
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    client = open_client(StateApiClient, address)
    options = ListApiOptions(detail=True, filters=[("state", "=", "ALIVE")])
    with answered_by(address):
        nodes = client.list(StateResource.NODES, options, raise_on_missing_output=False)
    return [node if isinstance(node, dict) else vars(node) for node in nodes]
