"""The proxy's route table and its trust boundary: which path is which route, and who may use it.

Auth is decided on the exact, decoded path, never on a prefix: a path that an HTTP stack could
read as another one (dot-segments, empty segments, encoded or back slashes, control characters)
is refused with a 400 before anything else looks at it, so the path that was authorised is the
path that is served or forwarded, byte for byte.

Three levels, as in SGLang's own auth (``--api-key``, ``--admin-api-key``):

* ``OPEN``: no key (health and metrics probes; SGLang exempts them too);
* ``USER``: the API key (every route not listed otherwise, including unknown ones);
* ``INSPECT``: the API key or the admin key (the proxy's own ``/cache/stats`` and
  ``/cache/info``: the admin inspects the whole cache);
* ``ADMIN``: the admin key when one is set (the API key is then refused with 403), else the API
  key: the proxy's ``/cache/clear`` and SGLang's "admin-optional" routes (``/flush_cache``,
  ``/abort_request``, weight updates, profiling, ...).
"""

from __future__ import annotations

import enum
import hmac
import re
from dataclasses import dataclass

__all__ = ["ROUTES", "Access", "Gate", "Route", "access_of", "check_path"]


class Access(enum.Enum):
    """Who may call a route."""

    OPEN = "open"
    USER = "user"
    INSPECT = "inspect"
    ADMIN = "admin"


@dataclass(frozen=True)
class Route:
    """A route the proxy answers itself: its handler's name, methods and access level."""

    handler: str
    methods: frozenset[str]
    access: Access


def _route(handler: str, *methods: str, access: Access = Access.USER) -> Route:
    return Route(handler, frozenset(methods), access)


ROUTES: dict[str, Route] = {
    "/generate": _route("generate", "POST", "PUT"),
    "/v1/completions": _route("completion", "POST"),
    "/v1/chat/completions": _route("chat", "POST"),
    "/cache/stats": _route("stats", "GET", access=Access.INSPECT),
    "/cache/info": _route("info", "GET", access=Access.INSPECT),
    "/cache/clear": _route("clear", "POST", access=Access.ADMIN),
    "/health": _route("health", "GET", access=Access.OPEN),
    "/metrics": _route("metrics", "GET", access=Access.OPEN),
}
"""The proxy's own routes; any other path (or method) is passed through to SGLang."""

# Passed-through paths with another level than USER (SGLang 0.5.23's http_server.py).
_OPEN_UPSTREAM = frozenset({"/health", "/health_generate", "/ready", "/metrics"})
_ADMIN_UPSTREAM = frozenset(
    {
        "/abort_request",
        "/add_external_corpus",
        "/begin_weight_update",
        "/configure_logging",
        "/continue_generation",
        "/destroy_weights_update_group",
        "/dump_expert_distribution_record",
        "/end_weight_update",
        "/flush_cache",
        "/freeze_gc",
        "/get_remote_instance_transfer_engine_info",
        "/get_weights_by_name",
        "/init_weights_send_group_for_remote_instance",
        "/init_weights_update_group",
        "/list_external_corpora",
        "/load_lora_adapter",
        "/load_lora_adapter_from_tensors",
        "/pause_generation",
        "/pd_role_switch",
        "/release_memory_occupation",
        "/remote_instance_transfer_engine_info",
        "/remove_external_corpus",
        "/resume_memory_occupation",
        "/send_weights_to_remote_instance",
        "/set_internal_state",
        "/set_trace_level",
        "/slow_down",
        "/start_expert_distribution_record",
        "/start_profile",
        "/stop_expert_distribution_record",
        "/stop_profile",
        "/unload_lora_adapter",
        "/update_weight_version",
        "/update_weights_from_disk",
        "/update_weights_from_distributed",
        "/update_weights_from_ipc",
        "/update_weights_from_tensor",
        "/weights_checker",
    }
)
_ADMIN_UPSTREAM_TREES = ("/dumper/", "/hicache/")

_KNOWN_RAW = frozenset(path.encode() for path in ROUTES)
# %2F / %5C (encoded separators) and %00 in the raw target; the decoded path is checked apart.
_ENCODED_SEPARATOR = re.compile(rb"%(2f|5c|00)", re.IGNORECASE)
_ENCODED_BACKSLASH_OR_NUL = re.compile(rb"%(5c|00)", re.IGNORECASE)
# Model ids are often Hugging Face paths ("org/name"), which the openai SDK's models.retrieve
# sends as one %2F-encoded segment; SGLang's route takes the rest of the path as the id. The
# decoded path is checked as any other (no dot-segments), so this cannot reach another route.
_MODEL_ROUTE = b"/v1/models/"
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
_NOT_VISIBLE_ASCII = re.compile(rb"[^\x21-\x7e]")


def check_path(path: str, raw_path: bytes | None, query: bytes = b"") -> str | None:
    """Why ``path`` (decoded) with ``raw_path`` (as sent) is refused, or ``None`` if it is fine.

    Refused: no leading ``/``, a ``.`` or ``..`` segment (also percent-encoded), an empty
    segment (``//``, a trailing ``/``), a backslash, a control character, an encoded ``/``
    (except in a model id under ``/v1/models/``), ``\\`` or NUL, and raw bytes outside visible
    ASCII in the target (they must be percent-encoded).
    """
    if raw_path in _KNOWN_RAW and not query:
        return None  # a route of the table, spelled exactly: nothing to check (the hot path)
    if not path.startswith("/"):
        return "The request path must start with '/'."
    if _NOT_VISIBLE_ASCII.search(raw_path or b"") or _NOT_VISIBLE_ASCII.search(query):
        return "The request target must be visible ASCII; percent-encode other bytes."
    if raw_path is not None:
        if raw_path.startswith(_MODEL_ROUTE):
            encoded = _ENCODED_BACKSLASH_OR_NUL.search(raw_path)
        else:
            encoded = _ENCODED_SEPARATOR.search(raw_path)
        if encoded:
            return "The request path must not contain an encoded '/', '\\' or NUL."
    if _CONTROL.search(path):
        return "The request path must not contain a backslash or control characters."
    if path == "/":
        return None
    for segment in path[1:].split("/"):
        if segment in ("", ".", ".."):
            return (
                "The request path must not contain empty, '.' or '..' segments"
                f" (got {path[:200]!r})."
            )
    return None


def access_of(path: str, method: str) -> tuple[Route | None, Access]:
    """The proxy's own route for ``method path`` (``None``: pass through) and its access level."""
    route = ROUTES.get(path)
    if route is not None and method in route.methods:
        return route, route.access
    if path in _OPEN_UPSTREAM:
        return None, Access.OPEN
    if path in _ADMIN_UPSTREAM or path.startswith(_ADMIN_UPSTREAM_TREES):
        return None, Access.ADMIN
    return None, Access.USER


def _matches(token: str | None, key: str) -> bool:
    return token is not None and hmac.compare_digest(token.encode(), key.encode())


class Gate:
    """Decide a request's auth from its access level and bearer token (constant-time compares).

    Args:
        api_keys: the keys clients may send (none: every ``USER`` route is open).
        admin_key: the key of ``ADMIN`` routes, when set.
    """

    __slots__ = ("admin_key", "api_keys")

    def __init__(self, api_keys: tuple[str, ...], admin_key: str | None) -> None:
        self.api_keys = api_keys
        self.admin_key = admin_key

    def is_user(self, token: str | None) -> bool:
        """Whether ``token`` is one of the API keys (every key is compared, to keep it constant)."""
        return sum(_matches(token, key) for key in self.api_keys) > 0

    def is_admin(self, token: str | None) -> bool:
        """Whether ``token`` is the admin key."""
        return self.admin_key is not None and _matches(token, self.admin_key)

    def denied(self, access: Access, method: str, token: str | None) -> tuple[int, str] | None:
        """``(status, message)`` when the request may not proceed, else ``None``."""
        if access is Access.OPEN or method == "OPTIONS":  # CORS preflights, as in SGLang
            return None
        if access is Access.ADMIN and self.admin_key is not None:
            if self.is_admin(token):
                return None
            if self.is_user(token):
                return 403, "Forbidden: this route needs the admin key."
            return 401, "Unauthorized"
        if not self.api_keys or self.is_user(token):
            return None
        if access is Access.INSPECT and self.is_admin(token):
            return None
        return 401, "Unauthorized"
