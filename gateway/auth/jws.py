"""Strict compact JWS parsing and the protected header policy, ours end to end.

Everything is typed before it is used: exactly three canonical base64url segments; a header and a
payload that are each a JSON object (no duplicate members, no ``NaN``/``Infinity``, bounded nesting).
joserfc only checks the signature (``gateway.auth.verifier``).

Header parameters (RFC 7515): only ``alg`` (allow-listed) and ``kid`` are used; keys come from the
configured JWKS and nowhere else (``jku``, ``jwk``, ``x5u``, ``x5c`` are never used to find or build
a key). Other parameters are ignored, as §4 asks of a recipient that does not understand them (identity
providers add ``x5t`` or their own). ``crit`` names extensions a recipient MUST understand and we
implement none, so it is refused (``unsupported_crit``), as is ``b64`` other than ``true`` (RFC 7797,
``unsupported_header``). The header must start with ``{``: with the compact form, every acceptable
token then has the JWT shape that log redaction looks for (``gateway.runtime.redaction``).
See docs/security.md (Tokens).
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.auth.claims import AuthenticationError

_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_UNUSED_BITS = {2: 0b1111, 3: 0b11}  # of the last character, by the segment's length modulo 4
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


@dataclass(frozen=True, slots=True)
class Compact:
    """A compact JWS split and decoded; nothing in it is verified yet."""

    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes


def _b64url_decode(segment: bytes) -> bytes:
    """Strict, canonical base64url without padding (RFC 7515 §2).

    Canonical without re-encoding: in a segment of the alphabet, only the last character of a 2- or
    3-character tail carries bits beyond the data (4 or 2), and they must be zero.
    """
    tail = len(segment) % 4
    if tail == 1 or not _B64URL.fullmatch(segment):
        raise ValueError("not base64url")
    if tail and _ALPHABET.index(segment[-1]) & _UNUSED_BITS[tail]:
        raise ValueError("not canonical base64url")
    return binascii.a2b_base64(segment.translate(_TO_STANDARD) + b"=" * (-len(segment) % 4), strict_mode=True)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_object(data: bytes) -> dict[str, Any]:
    """A JSON object, or ValueError: anything else (list, string, number, invalid JSON, too deep)."""
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def parse_compact(token: str) -> Compact:
    """Splits and decodes a compact JWS; ``AuthenticationError("malformed")`` for anything not one."""
    try:
        raw = token.encode("ascii")
        parts = raw.split(b".")
        if len(parts) != 3:
            raise ValueError("not three segments")
        header_bytes = _b64url_decode(parts[0])
        if not header_bytes.startswith(b"{"):
            raise ValueError("header is not a JSON object")
        header = json_object(header_bytes)
        payload = _b64url_decode(parts[1])
        signature = _b64url_decode(parts[2])
    except (ValueError, UnicodeError):
        raise AuthenticationError("malformed") from None
    return Compact(header, payload, parts[0] + b"." + parts[1], signature)


def check_header(header: Mapping[str, Any], algorithms: list[str]) -> tuple[str, str | None]:
    """``(alg, kid)`` of an acceptable protected header (see the module docstring for the policy)."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise AuthenticationError("algorithm_not_allowed")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise AuthenticationError("malformed")
    if "crit" in header:
        raise AuthenticationError("unsupported_crit")
    if "b64" in header and header["b64"] is not True:
        raise AuthenticationError("unsupported_header")
    return alg, kid
