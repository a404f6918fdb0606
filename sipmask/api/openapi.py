"""The OpenAPI 3.1 description of the admin API, served at GET /openapi.json.

Written by hand as data so it reads like the contract (CONTRACT.md "HTTP API"); a test
checks that every route the app serves is described here and the reverse.
"""

from __future__ import annotations

from typing import Any

from sipmask.store.rules import MAX_CALL_S, MAX_CONCURRENT, MAX_TTL

OPENAPI_VERSION = "3.1.0"

_NUMBER = {"type": "string", "description": "a phone number; +86, 0086, 86 prefixes, tel: "
                                            "URIs and separators are accepted and normalised"}
_X = {"type": "string", "pattern": "^700[0-9]{12}$",
      "description": "a 15-digit privacy number from the tenant's pool"}
_TIME = {"type": ["string", "null"], "format": "date-time"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_BINDING_REF = {"$ref": "#/components/schemas/Binding"}
_ID_PARAM = {"name": "id", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": "^[0-9A-Za-z_-]{1,64}$"}}
_LIMIT = {"name": "limit", "in": "query", "required": False,
          "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}

_TTL = {"type": "integer", "minimum": 0, "maximum": MAX_TTL, "default": 7200,
        "description": "seconds; 0 means no expiry"}

_AUTH_ERRORS = {"400": _error("malformed request: bad JSON, wrong type, unknown field"),
                "401": _error("missing or unknown bearer token"),
                "405": _error("method not allowed on this path"),
                "413": _error("body over 64 KiB")}

DOCUMENT: dict[str, Any] = {
    "openapi": OPENAPI_VERSION,
    "info": {
        "title": "sipmask admin API",
        "version": "1",
        "description": "Bindings of 700 privacy numbers, per tenant. Every /v1 call needs "
                       "`Authorization: Bearer <tenant token>` (GET /v1/trace: an operator "
                       "token instead); the token decides the tenant, "
                       "and another tenant's binding answers 404. Errors are "
                       '`{"error": {"field": …, "message": …}}`: 400 shape, 401 auth, 403 '
                       "another tenant named, 404 unknown id, 409 conflict or pool exhausted, "
                       "422 refused by a rule (bad number, X not in pool, a number out of its "
                       "range).",
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/bindings": {
            "post": {
                "operationId": "createBinding",
                "summary": "Create an AXB or AXN binding; X is allocated when not given",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/BindingCreate"}}}},
                "responses": {"201": _json(_BINDING_REF, "the binding"),
                              "403": _error("the body names another tenant"),
                              "409": _error("already bound on X, or no free X in the pool"),
                              "422": _error("a rule refuses it; `field` names the input"),
                              **_AUTH_ERRORS},
            },
            "get": {
                "operationId": "listBindings",
                "summary": "Live bindings of this tenant, by id order or on one X",
                "parameters": [{"name": "x", "in": "query", "required": False,
                                "schema": _X}, _LIMIT],
                "responses": {"200": _json({"type": "array", "items": _BINDING_REF},
                                           "the bindings"),
                              "422": _error("x is not a privacy number, or limit out of "
                                            "range"), **_AUTH_ERRORS},
            },
        },
        "/v1/bindings/{id}": {
            "parameters": [_ID_PARAM],
            "get": {
                "operationId": "getBinding",
                "responses": {"200": _json(_BINDING_REF, "the binding"),
                              "404": _error("no such live binding for this tenant"),
                              **_AUTH_ERRORS},
            },
            "delete": {
                "operationId": "deleteBinding",
                "responses": {"204": {"description": "deleted"},
                              "404": _error("no such live binding for this tenant"),
                              **_AUTH_ERRORS},
            },
            "patch": {
                "operationId": "updateBindingTtl",
                "summary": "New expiry counted from now; ttl 0 means no expiry",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/BindingPatch"}}}},
                "responses": {"200": _json(_BINDING_REF, "the binding with its new expiry"),
                              "404": _error("no such live binding for this tenant"),
                              "422": _error("ttl out of range"), **_AUTH_ERRORS},
            },
        },
        "/v1/cdrs": {
            "get": {
                "operationId": "listCdrs",
                "summary": "This tenant's call detail records, oldest first",
                "parameters": [
                    {"name": "since", "in": "query", "required": False,
                     "description": "Unix seconds or ISO-8601 (UTC when no zone), "
                                    "1970 to 9999",
                     "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}],
                "responses": {"200": _json({"type": "array",
                                            "items": {"$ref": "#/components/schemas/Cdr"}},
                                           "the records"),
                              "422": _error("since or limit out of range"), **_AUTH_ERRORS},
            },
        },
        "/v1/trace": {
            "get": {
                "operationId": "trace",
                "summary": "Which binding held X at a moment, and its calls, across tenants "
                           "(operator token only: operators.<name>.token)",
                "parameters": [
                    {"name": "x", "in": "query", "required": True,
                     "schema": {"type": "string", "pattern": "^700[0-9]{12}$"}},
                    {"name": "at", "in": "query", "required": True,
                     "description": "Unix seconds or ISO-8601 (UTC when no zone)",
                     "schema": {"type": "string"}}],
                "responses": {"200": _json({"type": "object", "required": ["bindings", "cdrs"],
                                            "properties": {
                                                "bindings": {"type": "array", "items": {
                                                    "$ref": "#/components/schemas/Held"}},
                                                "cdrs": {"type": "array", "items": {
                                                    "$ref": "#/components/schemas/Cdr"}},
                                                "cdrs_truncated": {"const": True}}},
                                           "bindings that held X then, with real numbers, "
                                           "and the calls made through them"),
                              "400": _error("x or at missing or malformed"),
                              "401": _error("missing or unknown bearer token"),
                              "403": _error("a tenant's token: tracing takes an operator's"),
                              "405": _error("method not allowed on this path")},
            },
        },
        "/v1/recordings/{cdr_id}": {
            "get": {
                "operationId": "getRecording",
                "summary": "A recorded call as a stereo WAV (caller left, callee right): the "
                           "token's tenant's own; an operator token reads any tenant's",
                "parameters": [{"name": "cdr_id", "in": "path", "required": True,
                                "description": "the CDR's call_id",
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the recording, unsealed",
                                      "headers": {"X-Sipmask-Recording": {
                                          "description": "how whole the file was",
                                          "schema": {"enum": ["complete", "truncated",
                                                              "damaged", "plain"]}}},
                                      "content": {"audio/wav": {"schema": {
                                          "type": "string", "format": "binary"}}}},
                              "404": _error("no recording of this call for this tenant"),
                              "401": _error("missing or unknown bearer token"),
                              "405": _error("method not allowed on this path"),
                              "500": _error("the recording does not open with "
                                            "store.key_file")},
            },
        },
        "/healthz": {
            "get": {
                "operationId": "health", "security": [],
                "responses": {"200": _json({"type": "object", "properties": {
                    "status": {"const": "ok"}}}, "serving and the store is readable"),
                    "503": _error("the store cannot be read")},
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics", "security": [],
                "responses": {"200": {"description": "Prometheus text exposition",
                                      "content": {"text/plain": {"schema": {
                                          "type": "string"}}}}},
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi", "security": [],
                "responses": {"200": _json({"type": "object"}, "this document")},
            },
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "BindingCreate": {
                "type": "object", "additionalProperties": False,
                "required": ["mode", "a"],
                "properties": {
                    "mode": {"enum": ["axb", "axn", "axe", "axyb"]},
                    "a": _NUMBER,
                    "b": {**_NUMBER, "type": ["string", "null"],
                          "description": "required for axb and axyb, optional for axe, "
                                         "absent for axn"},
                    "x": {**_X, "type": ["string", "null"]},
                    "ext": {"type": ["string", "null"], "pattern": "^[0-9]{1,8}$",
                            "description": "axe only: the extension, tenants.<t>.ext_digits "
                                           "digits; default: a free one at random"},
                    "y": {**_X, "type": ["string", "null"],
                          "description": "axyb only: the number B calls to reach A; default: "
                                         "allocated from the pool"},
                    "record": {"type": "boolean", "default": False,
                               "description": "record this binding's calls (with a notice)"},
                    "ttl": _TTL,
                    "tenant": {"type": "string",
                               "description": "optional; must be the token's own tenant"},
                    "direction": {"enum": ["a_to_b", "b_to_a", "both"], "default": "both",
                                  "description": "axb and axyb only: the one way calls "
                                                 "may go"},
                    "max_duration_s": {"type": "integer", "minimum": 0,
                                       "maximum": MAX_CALL_S,
                                       "description": "answered calls end after this; "
                                                      "0: no limit"},
                    "max_concurrent": {"type": "integer", "minimum": 0,
                                       "maximum": MAX_CONCURRENT,
                                       "description": "calls in progress on X; 0: no cap"},
                    "blacklist": {"type": "array", "items": {"type": "string"},
                                  "description": "caller numbers or prefixes refused"},
                },
            },
            "BindingPatch": {
                "type": "object", "additionalProperties": False, "required": ["ttl"],
                "properties": {"ttl": _TTL},
            },
            "Binding": {
                "type": "object",
                "required": ["id", "mode", "tenant", "x", "a", "b", "created_at",
                             "expires_at"],
                "properties": {
                    "id": {"type": "string"},
                    "mode": {"enum": ["axb", "axn", "axe", "axyb"]},
                    "tenant": {"type": "string"},
                    "x": _X,
                    "a": {"type": "string"},
                    "b": {"type": ["string", "null"]},
                    "created_at": _TIME,
                    "expires_at": _TIME,
                    "created_at_unix": {"type": "number"},
                    "expires_at_unix": {"type": ["number", "null"]},
                    "direction": {"enum": ["a_to_b", "b_to_a", "both"]},
                    "max_duration_s": {"type": "integer"},
                    "max_concurrent": {"type": "integer"},
                    "blacklist": {"type": "array", "items": {"type": "string"}},
                    "ext": {"type": "string"},
                    "y": _X,
                    "record": {"const": True},
                },
            },
            "Held": {
                "allOf": [_BINDING_REF, {"type": "object", "properties": {
                    "created_by": {"type": ["string", "null"]},
                    "ended_at": _TIME,
                    "ended_by": {"type": ["string", "null"]},
                    "end_reason": {"enum": ["unbind", "expiry", None]}}}],
            },
            "Cdr": {
                "type": "object",
                "properties": {
                    "call_id": {"type": "string"}, "tenant": {"type": "string"},
                    "binding_id": {"type": ["string", "null"]}, "x": {"type": "string"},
                    "caller": {"type": "string"}, "callee": {"type": ["string", "null"]},
                    "direction": {"enum": ["a_to_b", "b_to_a", "n_to_a", None]},
                    "invite_at": _TIME, "ring_at": _TIME, "answer_at": _TIME,
                    "end_at": _TIME, "duration_s": {"type": "number"},
                    "release_side": {"enum": ["caller", "callee", "sipmask", None]},
                    "sip_status": {"type": ["integer", "null"]},
                    "unconnected_cause": {"enum": ["none", "no_binding", "not_allowed",
                                                   "blacklist", "rate_limited",
                                                   "callee_failed", "timeout",
                                                   "trunk_unreachable"]},
                    "recording": {"type": ["string", "null"],
                                  "description": "the recording's file name; GET "
                                                 "/v1/recordings/{call_id} reads it"},
                },
            },
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {
                    "type": "object", "required": ["field", "message"],
                    "properties": {"field": {"type": "string"},
                                   "message": {"type": "string"}}}},
            },
        },
    },
}
