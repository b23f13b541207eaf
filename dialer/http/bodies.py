"""Request bodies of the API: their content type, JSON that may carry unpaired surrogate
escapes, and a model's validation errors in the API's 422 shape. (Their size is limited
where they are read: ``limits.read_body``.)"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from dialer.errors import InvalidInput
from dialer.http.errors import validation_details
from dialer.intake.readers import jsonfile

M = TypeVar("M", bound=BaseModel)


def content_type(request: Request) -> str:
    """The media type alone, lower case ("" when the request names none)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def require_type(request: Request, *others: str) -> str:
    """The request's media type: JSON (or none named), or one of ``others``; anything else
    is refused naming what to send, as ``POST /v1/batches`` does (not read as JSON and
    refused as "not valid JSON")."""
    ctype = content_type(request)
    if ctype not in ("application/json", "", *others):
        send = " or ".join(("application/json", *others))
        raise InvalidInput(f"content-type {ctype!r} is not supported: send {send}")
    return ctype


def loads(body: bytes) -> Any:
    """orjson, with slow paths for JSON that carries unpaired surrogate escapes or integers
    past 64 bits."""
    try:
        return jsonfile.loads(body)
    except orjson.JSONDecodeError as e:
        try:
            return jsonfile.loads_lenient(body)
        except ValueError:
            raise InvalidInput(f"body is not valid JSON: {e}") from None


def validated(model: type[M], data: Any) -> M:
    """``model`` from parsed JSON, or 422 naming the first bad field (all of them in details)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        details = validation_details(list(e.errors()))
        raise InvalidInput(f"{details[0]['field']}: {details[0]['message']}", details) from None
