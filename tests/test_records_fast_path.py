"""The plain format's fast path (msgspec, ``consumers.records.fast_decode``) against the pydantic model alone.

``decode_record`` with its fast path must return exactly what it returns without it (the model deciding every
value): the same update, or the same reject reason and detail. Checked on generated values, valid and hostile
(wrong types, extra fields, huge values, bad times, unicode, repeated fields, deep nesting, invalid UTF-8, lone
surrogates, byte-level damage); and each guard of the fast path is shown to matter: with it removed, the same
corpus finds a disagreement.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import msgspec
import pytest

from consumers import records
from consumers.records import Decoded, StatusUpdate, decode_record, fast_decode
from schemas import SessionStatus, SessionType

LIMIT = 64 * 1024

# Parts of generated values, as JSON text (so that repeated fields and raw bytes can be written).
STRINGS = [
    '"s"',
    '""',
    '"' + "x" * 256 + '"',
    '"' + "x" * 257 + '"',
    '"' + "\U0001f600" * 256 + '"',
    '"' + "\U0001f600" * 257 + '"',
    '"' + "é" * 257 + '"',
    '"\\u00e9t\\u00e9"',
    '"\\ud83d\\ude00"',
    '"\\ud800"',
    '"\\udc00x"',
    '"a\\u0000b"',
    '"tab\\tnew\\nline"',
    '"a\u007fb"',
    '"\u2028"',
    '"e\u0301"',
]
NON_STRINGS = ["0", "-1", "1.5", "1e400", "true", "false", "null", "[]", '["active"]', "{}", '{"a": 1}', "9" * 30]
STATUSES = ['"active"', '"fetched"', '"completed"', '"expired"', '"failed"', '"cancelled"', '"ACTIVE"', '"active "']
TYPES = ['"issuance"', '"presentation"', "null", '"other"', '"Issuance"', '["issuance"]', "1"]
DATES = ["2026-12-07", "0001-01-01", "9999-12-31", "2024-02-29", "2023-02-29", "2026-13-01", "0000-01-01", "2026-1-01"]
SEPARATORS = ["T", "t", " ", "_"]
TIMES = ["06:58:20", "00:00:00", "23:59:59", "24:00:00", "23:59:60", "06:58", "6:58:20"]
FRACTIONS = ["", ".", ".1", ".123", ".123456", ".1234567", ".9999995", ".9999999", ",123"]
ZONES = ["Z", "z", "+00:00", "-00:00", "+01:00", "-23:59", "+24:00", "+0100", "+01", "", "+14:00"]
EXTRA_VALUES = [
    "1",
    "NaN",
    "Infinity",
    "1e400",
    "-0.0",
    "9" * 4300,
    "9" * 4301,
    "1." + "9" * 5000,
    '"\\ud800"',
    '"\\uDFFF"',
    '"\\ud800\\udc00"',
    '"ok"',
    '"\\x41"',
    "[" * 150 + "]" * 150,
    "[" * 199 + "]" * 199,
    "[" * 200 + "]" * 200,
    "[" * 201 + "]" * 201,
    "[" * 1000 + "]" * 1000,
    '{"a": ' * 210 + "1" + "}" * 210,
    "tru",
    "01",
    ".5",
    '"' + "y" * 5000 + '"',
]
RAW_EXTRAS = [b'"\xff"', b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"', b'"\xc0\xaf"', b'"\xe2\x82"', b'"\x01"']


def body(fields: list[tuple[str, str]]) -> bytes:
    return ("{" + ",".join(f"{json.dumps(name)}:{value}" for name, value in fields) + "}").encode()


def valid_fields(rng: random.Random) -> list[tuple[str, str]]:
    fields = [
        ("id", '"sess-1"'),
        ("tenantId", '"tenant-a"'),
        ("status", rng.choice(STATUSES[:6])),
        ("updatedAt", '"2026-11-28T10:00:00.123Z"'),
    ]
    if rng.random() < 0.5:
        fields.append(("type", rng.choice(TYPES[:3])))
    rng.shuffle(fields)
    return fields


def generated(count: int, seed: int = 2026) -> Iterator[tuple[bytes | None, bytes]]:
    """Keys and values: one change (or a few) to a valid value each."""
    rng = random.Random(seed)
    for _ in range(count):
        fields = valid_fields(rng)
        raw_tail = b""
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            kind = rng.randrange(10)
            if kind == 0:  # a field of the wrong type or length, or odd unicode
                name = rng.choice(("id", "tenantId", "status", "updatedAt", "type"))
                fields.append((name, rng.choice(STRINGS + NON_STRINGS)))
            elif kind == 1:
                fields.append(("status", rng.choice(STATUSES)))
            elif kind == 2:
                fields.append(("type", rng.choice(TYPES)))
            elif kind == 3:  # a time in any shape
                when = rng.choice(DATES) + rng.choice(SEPARATORS) + rng.choice(TIMES)
                when += rng.choice(FRACTIONS) + rng.choice(ZONES)
                fields.append(("updatedAt", json.dumps(when)))
            elif kind == 4:  # a field the model ignores
                extra = (rng.choice(("extra", "x", "ID", "")), rng.choice(EXTRA_VALUES))
                fields.insert(rng.randrange(len(fields) + 1), extra)
            elif kind == 5 and fields:  # a field missing
                fields.pop(rng.randrange(len(fields)))
            elif kind == 6:  # a field repeated, the last one counts
                name, repeated = rng.choice(fields) if fields else ("id", '"s"')
                fields.append((name, rng.choice([repeated, *STRINGS[:3], *STATUSES[:2], "null"])))
            elif kind == 7:
                raw_tail = rng.choice(RAW_EXTRAS)
            else:
                pass  # unchanged: the common shape
        value = body(fields)
        if raw_tail:
            value = value[:-1] + b',"raw":' + raw_tail + b"}"
        damage = rng.randrange(12)
        if damage == 0:
            value = b"\xef\xbb\xbf" + value
        elif damage == 1:
            value = value + rng.choice((b" ", b"\n", b"}", b"x", b"\x00"))
        elif damage == 2 and len(value) > 2:
            cut = rng.randrange(1, len(value))
            value = value[:cut]
        elif damage == 3 and value:
            at = rng.randrange(len(value))
            value = value[:at] + bytes([rng.randrange(256)]) + value[at + 1 :]
        key_choice = rng.randrange(8)
        key: bytes | None
        if key_choice == 0:
            key = rng.choice((None, b"", b"\xff", b"other", b"SESS-1"))
        else:
            key = b"sess-1"
            for name, text in reversed(fields):  # the value's own id (the last one), when it is a string
                if name == "id":
                    try:
                        parsed = json.loads(text)
                    except ValueError:
                        break
                    if isinstance(parsed, str):
                        key = parsed.encode("utf-8", "surrogatepass")
                    break
        yield key, value


EDGE_TIMES = [
    "2026-11-28T10:00:00.9999995Z",
    "2026-11-28T10:00:00+0100",
    "2026-11-28t10:00:00z",
    "2026-11-28 10:00:00Z",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:30:00+01:00",
]
EDGE_CASES: list[tuple[bytes | None, bytes]] = [
    (b"sess-1", body(valid_fields(random.Random(1)))),
    *(
        (b"sess-1", body([("id", '"sess-1"'), ("tenantId", '"t"'), ("status", '"active"'), ("updatedAt", f'"{t}"')]))
        for t in EDGE_TIMES
    ),
    *((b"sess-1", body([*valid_fields(random.Random(2)), ("x", extra)])) for extra in EXTRA_VALUES),
]


@contextmanager
def model_only() -> Iterator[None]:
    """``decode_record`` with its fast path off: the model decides every value (the straightforward path)."""
    original = records.fast_decode
    records.fast_decode = lambda value: None
    try:
        yield
    finally:
        records.fast_decode = original


def outcome(key: bytes | None, value: bytes) -> Decoded | str:
    try:
        return decode_record(key, value, LIMIT)
    except Exception as error:  # a broken fast path may raise; that is a disagreement too
        return f"raised {type(error).__name__}"


def disagreements(corpus: list[tuple[bytes | None, bytes]]) -> list[tuple[bytes | None, bytes, object, object]]:
    found: list[tuple[bytes | None, bytes, object, object]] = []
    for key, value in corpus:
        fast = outcome(key, value)
        with model_only():
            model = outcome(key, value)
        if fast != model:
            found.append((key, value[:80], fast, model))
    return found


CORPUS = EDGE_CASES + list(generated(6000))


def test_the_fast_path_and_the_model_agree_on_every_generated_value() -> None:
    found = disagreements(CORPUS)
    assert not found, f"{len(found)} disagreements, e.g. {found[:3]}"


def test_the_corpus_exercises_both_paths() -> None:
    """Not vacuous: many values take the fast path, many are rejected, for many reasons."""
    fast_taken = sum(1 for _, value in CORPUS if fast_decode(value) is not None)
    results = [outcome(key, value) for key, value in CORPUS]
    reasons = {result.reason for result in results if isinstance(result, records.Rejected)}
    assert fast_taken > 1000
    taken_by_the_model = sum(
        isinstance(result, StatusUpdate) and fast_decode(value) is None
        for result, (_, value) in zip(results, CORPUS, strict=True)
    )
    assert taken_by_the_model > 20  # accepted, but not by the fast path (lower-case t/z, 7+ fraction digits, ...)
    assert {"schema", "not_json", "invalid_utf8", "key_mismatch", "missing_key", "time_out_of_range"} <= reasons


def test_the_common_shape_takes_the_fast_path() -> None:
    value = b'{"id":"s","tenantId":"t","status":"completed","updatedAt":"2026-11-28T10:00:00.123Z","type":"issuance"}'
    update = fast_decode(value)
    assert update is not None and type(update) is StatusUpdate
    assert update == decode_record(b"s", value, LIMIT)
    with model_only():
        assert decode_record(b"s", value, LIMIT) == update
    assert fast_decode(value[:-1] + b',"extra":[1,{"a":null}]}') == update  # fields the model ignores


# Each guard matters: with it removed, the corpus above finds a value the two read differently.


class _Lenient(msgspec.Struct, frozen=True, gc=False):
    id: str
    tenantId: str
    status: SessionStatus
    updatedAt: str
    type: SessionType | None = None


def _unguarded_extras(value: bytes) -> object:
    try:
        return records._decode_with_extras(value)
    except records._NOT_PLAIN:
        return None


BROKEN: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "no nesting bound": lambda mp: mp.setattr(records, "_MAX_NESTING", 10**9),
    "no size bound": lambda mp: mp.setattr(records, "_FAST_MAX_BYTES", 10**9),
    "no checks before skipping fields": lambda mp: mp.setattr(records, "_with_extras", _unguarded_extras),
    "any time shape": lambda mp: mp.setattr(records, "_FAST_TIME", re.compile(r".*[zZ]|.*[+-]\d\d:?\d\d")),
    "no length limits": lambda mp: mp.setattr(records, "_decode_plain", msgspec.json.Decoder(_Lenient).decode),
    "no time range": lambda mp: mp.setattr(records, "MAX_UPDATED_MS", 10**18),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_a_broken_fast_path_is_caught(breakage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    BROKEN[breakage](monkeypatch)
    assert disagreements(CORPUS), f"the corpus does not notice a fast path with {breakage}"
