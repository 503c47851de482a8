"""The model as an AWS Lambda function behind a function URL (or an API Gateway HTTP API): events in
payload format 2.0, answered with the function URL response format.

Handler: `zeroserve_runtime.functions.aws_lambda.handler`. The model loads when Lambda imports this
module, in the init phase of a new execution environment: that is the function's cold start, and a model
that cannot load fails the init, loudly, rather than every request after it.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from zeroserve_runtime.errors import InvalidInput
from zeroserve_runtime.functions.core import error_response, get_app

# Bodies a function URL passes through as text; anything else travels base64-encoded in the event and
# must be returned that way too.
TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml", "application/yaml")

# Lambda's init phase: the model loads now, before the first event (see above).
get_app()


def is_text(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower().startswith(TEXT_TYPES)


def decode_body(event: dict[str, Any]) -> bytes:
    body = event.get("body")
    if body is None:  # a function URL leaves `body` out when the request had none
        return b""
    if not event.get("isBase64Encoded"):
        return body.encode()
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("the event's body is marked isBase64Encoded but is not valid base64") from None


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    """One function URL event (payload format 2.0) in, one function URL response out."""
    entered = time.perf_counter()
    http = (event.get("requestContext") or {}).get("http")
    if not isinstance(http, dict) or "method" not in http:
        status, headers, payload = error_response(
            InvalidInput(
                "this handler answers function URL (or HTTP API) events in payload format 2.0, "
                "with requestContext.http.method; invoke it through its function URL"
            )
        )
    else:
        try:
            body = decode_body(event)
        except InvalidInput as e:
            status, headers, payload = error_response(e)
        else:
            path = event.get("rawPath") or http.get("path") or "/"
            # Function URLs already lowercase header names, and join repeated headers with commas.
            status, headers, payload = get_app().handle(
                http["method"], path, event.get("headers") or {}, body, entered
            )
    if is_text(headers.get("content-type")):
        return {"statusCode": status, "headers": headers, "body": payload.decode(), "isBase64Encoded": False}
    return {
        "statusCode": status,
        "headers": headers,
        "body": base64.b64encode(payload).decode("ascii"),
        "isBase64Encoded": True,
    }
