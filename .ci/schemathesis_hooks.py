"""Schemathesis hooks for the run in .ci/run (SCHEMATHESIS_HOOKS=schemathesis_hooks).

docs/openapi.yaml states every rule on resource names, client ids and request
ids that JSON Schema can state. What it cannot, these hooks know, and nothing
else is excused:

- Lengths in bytes, some of them on disk (see "Names and ids" in the spec): a
  value within the schema's character limits may still be too long in bytes.
  A schema-valid request refused with 400 invalid-input is dropped from the
  failures only when one of its values breaks such a byte rule.
- Renewing a lock that has no lease, without ttl_ms, is 400 invalid-input: a
  rule on the lock's state, which no request schema can state.

And one to keep the run bounded: a valid wait_ms (up to ten minutes) on a held
resource would wait that long, so waits are cut to 100 ms before they are sent.
"""

import json
import sys

import schemathesis

MAX_NAME = 1024
MAX_SEGMENT_ON_DISK = 200
MAX_CLIENT_ON_DISK = 160
MAX_LEASED_CLIENT_ON_DISK = 150
MAX_REQUEST_ID = 256
MAX_WAIT_MS = 600_000
WAIT_MS_SENT = 100


def utf8_len(text):
    return len(text.encode("utf-8", "surrogatepass"))


def name_too_long(name):
    """Whether resource name `name` breaks a byte rule."""
    if not isinstance(name, str):
        return False
    trimmed = name[1:] if name.startswith("/") else name
    trimmed = trimmed[:-1] if trimmed.endswith("/") else trimmed
    if utf8_len(trimmed) > MAX_NAME:
        return True
    for segment in trimmed.split("/"):
        on_disk = utf8_len(segment) + 2 * segment.count("%") + (2 if segment.startswith(".") else 0)
        if on_disk > MAX_SEGMENT_ON_DISK:
            return True
    return False


def client_too_long(client, leased):
    """Whether client id `client` breaks its byte rule."""
    if not isinstance(client, str):
        return False
    on_disk = utf8_len(client) + 2 * (client.count("%") + client.count("/"))
    return on_disk > (MAX_LEASED_CLIENT_ON_DISK if leased else MAX_CLIENT_ON_DISK)


def broken_byte_rule(case):
    """The byte rule one of the case's values breaks, if any."""
    query = case.query or {}
    for key in ("resource", "prefix"):
        if name_too_long(query.get(key)):
            return f"{key} longer than a resource name may be"
    body = case.body if isinstance(case.body, dict) else {}
    leased = case.operation.path == "/v1/lock" and isinstance(body.get("ttl_ms"), int)
    request_id = body.get("request_id")
    if name_too_long(body.get("resource")):
        return "resource longer than a resource name may be"
    if client_too_long(body.get("client"), leased):
        return "client id longer on disk than " + ("150 bytes (leased)" if leased else "160 bytes")
    if isinstance(request_id, str) and utf8_len(request_id) > MAX_REQUEST_ID:
        return "request_id over 256 bytes"
    return None


def error_of(response):
    try:
        return json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return {}


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure but a schema-valid request refused for a rule the
    schema cannot state."""
    if failure.code != "ST202" or response.status_code != 400:
        return True
    error = error_of(response)
    if error.get("code") != "invalid-input":
        return True
    why = broken_byte_rule(case)
    if why is None and case.operation.path == "/v1/renew":
        if "has no lease: give the renewal a TTL" in error.get("message", ""):
            why = "renewal of a lock without a lease, without ttl_ms"
    if why is None:
        return True
    print(f"schemathesis_hooks: excused {case.operation.label} refused with 400: {why}", file=sys.stderr)
    return False


@schemathesis.hook
def before_call(context, case, kwargs):
    """Cuts a valid wait_ms short: the run must not wait minutes for a lock
    an earlier call holds."""
    body = case.body
    if case.operation.path != "/v1/lock" or not isinstance(body, dict):
        return
    wait = body.get("wait_ms")
    if isinstance(wait, int) and not isinstance(wait, bool) and WAIT_MS_SENT < wait <= MAX_WAIT_MS:
        body["wait_ms"] = WAIT_MS_SENT
