"""Validate Netmera request and response bodies against ``netmera-rest-api.yaml`` (OpenAPI 3.1), for contract tests.

The spec is found at ``$OPTIMOVE_NETMERA_SPEC``, else at ``../shared/specs/netmera-rest-api.yaml`` relative to the
repository root (or to the current directory). Production code never imports this module.

Schemas are checked with JSON Schema 2020-12 (the OpenAPI 3.1 dialect); ``$ref`` pointers resolve inside the spec.
One spec ambiguity is tolerated by default: a ``oneOf`` whose branches all accept the instance (``getPushStats``'
``PushStatsByKeyResponse`` and ``PushStatsByDateRangeResponse`` declare no required properties, so every object
matches both). A ``oneOf`` that *no* branch accepts still fails. Pass ``strict_one_of=True`` to fail on both.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["NetmeraSpec", "SpecViolation", "load_spec", "spec_path"]

ENV_VAR = "OPTIMOVE_NETMERA_SPEC"
_URI = "urn:optimove-netmera:netmera-rest-api"
_REPO = Path(__file__).resolve().parents[3]
_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "instance"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}


class SpecViolation(AssertionError):
    """A body, query or response that the spec does not allow."""


class HttpResponse(Protocol):
    """The parts of an HTTP response (e.g. ``requests.Response``) that :meth:`NetmeraSpec.check` reads."""

    status_code: int
    content: bytes

    @property
    def headers(self) -> Mapping[str, str]: ...


def spec_path() -> Path:
    """Where the spec is: ``$OPTIMOVE_NETMERA_SPEC`` or ``../shared/specs/netmera-rest-api.yaml``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    for root in (_REPO, Path.cwd()):
        candidate = (root / ".." / "shared" / "specs" / "netmera-rest-api.yaml").resolve()
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"netmera-rest-api.yaml not found next to the repository ({_REPO.parent / 'shared' / 'specs'}); set {ENV_VAR}"
    )


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


class NetmeraSpec:
    """The loaded spec plus validators for its operations."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else spec_path()
        with self.path.open(encoding="utf-8") as fh:
            self.document: dict[str, Any] = yaml.safe_load(fh)
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_URI, resource)
        self._operations: dict[str, tuple[str, str, dict[str, Any]]] = {}
        for route, item in self.document["paths"].items():
            for method, op in item.items():
                if isinstance(op, dict) and "operationId" in op:
                    self._operations[op["operationId"]] = (method, route, op)

    @property
    def operation_ids(self) -> list[str]:
        """Every operationId in the spec."""
        return sorted(self._operations)

    def operation(self, operation_id: str) -> tuple[str, str, dict[str, Any]]:
        """``(method, path, operation object)``; KeyError for an operation the spec does not describe."""
        try:
            return self._operations[operation_id]
        except KeyError:
            raise KeyError(f"operation {operation_id!r} is not in {self.path.name}") from None

    # ---- validation primitives -------------------------------------------------------------------------------

    def _validate(self, ref: str, instance: Any, what: str, strict_one_of: bool) -> None:
        validator = Draft202012Validator({"$ref": f"{_URI}{ref}"}, registry=self._registry)
        problems = []
        for error in validator.iter_errors(instance):
            if not strict_one_of and error.validator == "oneOf" and not error.context:
                continue  # every branch matched: the spec's oneOf is ambiguous, not the instance wrong
            location = "/".join(str(p) for p in error.absolute_path) or "<root>"
            detail = sorted({sub.message for sub in error.context or ()})[:5]
            problems.append(f"{location}: {error.message}" + (f" ({'; '.join(detail)})" if detail else ""))
        if problems:
            raise SpecViolation(f"{what} violates the spec:\n  " + "\n  ".join(problems[:20]))

    def _response_object(self, operation_id: str, status: int) -> tuple[str, dict[str, Any]] | None:
        method, route, op = self.operation(operation_id)
        responses = op.get("responses", {})
        for key in (str(status), f"{str(status)[0]}XX", "default"):
            if key in responses:
                return _pointer("paths", route, method, "responses", key), responses[key]
        return None

    # ---- requests --------------------------------------------------------------------------------------------

    def validate_request(self, operation_id: str, body: Any, *, strict_one_of: bool = False) -> None:
        """Check a JSON request body (already decoded) against the operation's request schema."""
        method, route, op = self.operation(operation_id)
        content = (op.get("requestBody") or {}).get("content") or {}
        if "application/json" not in content:
            raise SpecViolation(f"{operation_id} takes no JSON request body")
        ref = _pointer("paths", route, method, "requestBody", "content", "application/json", "schema")
        self._validate(ref, body, f"{operation_id} request body", strict_one_of)

    def validate_query(self, operation_id: str, params: Mapping[str, Any]) -> None:
        """Check query parameters: required ones present, no undeclared ones, integers parse as integers."""
        _method, _route, op = self.operation(operation_id)
        declared = {p["name"]: p for p in op.get("parameters", []) if p.get("in") == "query"}
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise SpecViolation(f"{operation_id} has no query parameter(s) {unknown}")
        for name, param in declared.items():
            if name not in params:
                if param.get("required"):
                    raise SpecViolation(f"{operation_id} requires query parameter {name!r}")
                continue
            if (param.get("schema") or {}).get("type") == "integer":
                try:
                    int(str(params[name]))
                except ValueError:
                    raise SpecViolation(f"{operation_id} query {name}={params[name]!r} is not an integer") from None

    # ---- responses -------------------------------------------------------------------------------------------

    def validate_response(
        self,
        operation_id: str,
        status: int,
        body: bytes,
        content_type: str | None,
        *,
        strict_one_of: bool = False,
    ) -> Any:
        """Check a response as documented for ``status``; returns the decoded JSON body (None for no body).

        A documented response without ``content`` means *no body at all* (zero bytes). Undocumented error
        statuses must carry the ``ErrorResponse`` envelope (or an RFC 9457 problem detail for framework errors).
        """
        found = self._response_object(operation_id, status)
        if found is None:
            if status >= 400:
                return self.validate_error(body, content_type)
            raise SpecViolation(f"{operation_id} documents no response for HTTP {status}")
        ref, response = found
        content = response.get("content")
        if not content:
            if body:
                raise SpecViolation(
                    f"{operation_id} HTTP {status} must have no body, got {len(body)} bytes: {body[:200]!r}"
                )
            return None
        media = _media(content_type)
        if media not in content:
            raise SpecViolation(f"{operation_id} HTTP {status}: content type {content_type!r} not in {sorted(content)}")
        value = self._decode(body, f"{operation_id} HTTP {status}")
        schema_ref = f"{ref}/content/{media.replace('/', '~1')}/schema"
        if "schema" in content[media]:
            self._validate(schema_ref, value, f"{operation_id} HTTP {status} body", strict_one_of)
        return value

    def validate_error(self, body: bytes, content_type: str | None) -> Any:
        """Check an error body: ``{code, error}`` (``ErrorResponse``) or an RFC 9457 problem detail."""
        media = _media(content_type)
        value = self._decode(body, "error response")
        if media == "application/problem+json":
            errors = [e.message for e in Draft202012Validator(_PROBLEM_SCHEMA).iter_errors(value)]
            if errors:
                raise SpecViolation("problem detail invalid: " + "; ".join(errors))
            return value
        if media != "application/json":
            raise SpecViolation(f"error response has content type {content_type!r}")
        self._validate(_pointer("components", "schemas", "ErrorResponse"), value, "error body", True)
        if not (isinstance(value, dict) and {"code", "error"} <= set(value)):
            raise SpecViolation(f"error body must hold both code and error: {value!r}")
        return value

    def check(self, operation_id: str, response: HttpResponse, *, strict_one_of: bool = False) -> Any:
        """:meth:`validate_response` for an HTTP response object (``requests.Response`` and alike)."""
        return self.validate_response(
            operation_id,
            response.status_code,
            response.content,
            response.headers.get("content-type"),
            strict_one_of=strict_one_of,
        )

    @staticmethod
    def _decode(body: bytes, what: str) -> Any:
        try:
            return json.loads(body)
        except ValueError as exc:
            raise SpecViolation(f"{what}: body is not JSON: {body[:200]!r}") from exc


@functools.cache
def load_spec(path: str | None = None) -> NetmeraSpec:
    """The spec, loaded once per path (``None``: :func:`spec_path`)."""
    return NetmeraSpec(path)
