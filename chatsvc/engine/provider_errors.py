"""What went wrong in a model call, in words an operator can act on.

litellm raises its own exception classes (subclasses of openai's), often
wrapping the real cause and repeating class names in the text
("litellm.InternalServerError: InternalServerError: OpenAIException - ...").
Its class is not always the cause either: a request the OpenAI client refused
to send for lack of a key comes out as an InternalServerError. So the cause
chain decides: a timeout, a failed connection, the provider's HTTP status, a
request refused before it was sent, in that order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai


@dataclass(frozen=True)
class ProviderError:
    """A model call's failure: its `kind`, the provider's HTTP status if it answered, its words."""

    kind: str  # one of LABELS
    provider: str | None
    status: int | None
    detail: str

    def __str__(self) -> str:
        where = ", ".join(
            part for part in (self.provider, self.status and f"HTTP {self.status}") if part
        )
        label = LABELS[self.kind] + (f" ({where})" if where else "")
        return f"{label}: {self.detail}" if self.detail else label


LABELS = {
    "authentication": "Authentication failed",
    "not_found": "Model not found",
    "rate_limit": "Rate limited",
    "timeout": "Timed out",
    "server": "Provider server error",
    "connection": "Connection to the provider failed",
    "bad_request": "Request refused",
}

_TIMEOUTS = (openai.APITimeoutError, httpx.TimeoutException, TimeoutError)
_CONNECTION = (openai.APIConnectionError, httpx.TransportError, ConnectionError)
# Words of a request the client refused to send for want of credentials.
_CREDENTIALS = re.compile(r"credential|api[_ ]?key|auth", re.IGNORECASE)
# litellm's class-name prefixes, which it repeats: "litellm.X: X: OpenAIException - ".
_PREFIX = re.compile(r"^(?:litellm\.\w+: |\w+Error: |\w+Exception - )")


def classify(exc: BaseException) -> ProviderError | None:
    """The provider error `exc` is (or wraps), or None when it is not one."""
    chain = list(_causes(exc))
    if not any(isinstance(e, openai.OpenAIError | httpx.HTTPError) for e in chain):
        return None
    provider = getattr(exc, "llm_provider", None) or None
    detail = _detail(exc)
    if any(isinstance(e, _TIMEOUTS) for e in chain):
        return ProviderError("timeout", provider, None, detail)
    for e in reversed(chain):  # the innermost answer from the provider
        if isinstance(e, httpx.HTTPStatusError):
            status = e.response.status_code
            return ProviderError(_kind(status), provider, status, detail)
        if isinstance(e, openai.APIStatusError) and type(e).__module__.startswith("openai"):
            return ProviderError(_kind(e.status_code), provider, e.status_code, detail)
    if any(isinstance(e, _CONNECTION) for e in chain):
        return ProviderError("connection", provider, None, detail)
    if any(type(e) is openai.OpenAIError for e in chain):  # refused before sending
        kind = "authentication" if _CREDENTIALS.search(detail) else "bad_request"
        return ProviderError(kind, provider, None, detail)
    code = getattr(exc, "status_code", None)
    if isinstance(code, int):  # raised by litellm itself, e.g. a missing Anthropic key
        return ProviderError(_kind(code), provider, None, detail)
    return ProviderError("bad_request", provider, None, detail)


def readable(exc: BaseException) -> str:
    """One line for a failed answer's `error`: the classified provider error, else the
    exception's class and text."""
    found = classify(exc)
    if found is not None:
        return str(found)[:2000]
    detail = _detail(exc)
    name = type(exc).__name__
    return f"{name}: {detail}"[:2000] if detail else name


def _kind(status: int) -> str:
    if status in (401, 403):
        return "authentication"
    if status == 404:
        return "not_found"
    if status == 408:
        return "timeout"
    if status == 429:
        return "rate_limit"
    return "server" if status >= 500 else "bad_request"


def _detail(exc: BaseException) -> str:
    # litellm appends the wrapped exception's text again after "Original exception:".
    text = " ".join(str(exc).split()).split(" Original exception: ")[0]
    while match := _PREFIX.match(text):
        text = text[match.end() :]
    return text


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
