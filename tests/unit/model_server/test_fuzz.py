"""A bounded hypothesis fuzz of the model server's HTTP surface: no request may get a 5xx (issue 19).

Four strategies drive a real server process (the shared ``champion_server``, model "solo"):

1. V1 bodies, sent as JSON, text or form: arbitrary JSON at the top level and as ``instances``,
   and near-valid instances mutated in raw JSON text (a feature dropped, unknown keys, wrong
   types, nulls, ``NaN`` literals, huge strings and numbers, nested lists, duplicate keys, NUL
   and lone-surrogate escapes, odd ``entity_ids``).
2. V2 bodies: arbitrary ``inputs`` (names, shapes, datatypes, data, duplicated names,
   ``parameters`` and ``id`` junk), near-valid mutations of a good request, and the 2-D
   single-input form.
3. Raw bodies and content types: random bytes, truncated and deeply nested JSON, other
   encodings, multipart and form junk, sent as JSON, text, form, octet-stream, multipart, with
   odd parameters or no content type at all.
4. Headers: ``x-request-id`` values (long, latin-1, UTF-8 bytes, control characters, empty),
   ``Authorization`` junk, ``Content-Encoding`` that does not match the body, chunked bodies,
   CloudEvents and V2 binary-extension headers.

Every answer must be below 500: a bad request is the client's fault and must be named as one,
never an internal error. Nothing else is asserted per request; 4xx answers without a JSON
``error`` body, and inference-log rows the server dropped, are printed as ``[fuzz]`` lines
(``pytest -s``). After each strategy the same server still answers a good V1 and V2 request with
the registry model's own predictions, and ``/v2/health/live`` is 200.

Bounded so that it can run in ``make test``: a few hundred examples per strategy (about 12 s of
requests on top of the shared registry and server fixtures), derandomized and without an example
database, so every run sends the same requests and a failure printed by hypothesis can be replayed
as is. The requests that once got a 5xx are ``@example``s and are sent on every run.
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from components.common.server_process import LocalServer
from tests.serving_helpers import FEATURES, GOOD, GOOD_JSON, Registry, columnar, instances, v1, v2

TIMEOUT = 30  # seconds per request; a server that hangs fails the example instead of the whole run
LOG_FLUSH_WAIT = 0.5  # seconds; the shared server flushes its inference log every 0.2 s


def _fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run: a failure can be reproduced
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


class _Body(bytes):
    """A request body whose repr stays short in hypothesis's report: its recipe, or its start and end."""

    recipe: str | None = None

    def __repr__(self) -> str:
        if self.recipe:
            return self.recipe
        raw = bytes(self)
        return repr(raw) if len(raw) <= 600 else f"{raw[:300]!r} ... [{len(raw)} bytes] ... {raw[-100:]!r}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


class _Repeated(str):
    """A long header value, shown in reports as the expression that builds it."""

    recipe = ""

    def __repr__(self) -> str:
        return self.recipe

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.recipe)


def _repeated(text: str, times: int) -> str:
    value = _Repeated(text * times)
    value.recipe = f"{text!r} * {times}"
    return value


def _body(content: str | bytes, recipe: str | None = None) -> _Body:
    body = _Body(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    body.recipe = recipe
    return body


# --- JSON values -----------------------------------------------------------------------------------

_HUGE_INTS = st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30, -(10**40), 10**400])
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    _HUGE_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    # Lone surrogates: Python's JSON reader accepts them as \ud800 escapes; UTF-8 encoders refuse them.
    st.sampled_from(["\ud800", "a\udfff", "\udc80\ud800", "\x00", "\ufeff", "\U0010ffff"]),
)
# Object keys: any text, and keys that C parsers and encoders trip over (NUL, lone surrogates).
_KEYS = st.text(max_size=10) | st.sampled_from(["", "\x00", "a\x00b", "\ud800", "\U0001f600", "instances", "inputs"])
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=20,
)


@st.composite
def _dumps(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> str:
    """JSON text of a drawn value; NaN/Infinity come out as Python's non-standard literals."""
    return json.dumps(draw(values), allow_nan=True, ensure_ascii=draw(st.booleans()))


# Raw JSON value texts a json.dumps of Python values cannot produce, or produces rarely.
_ODD_TOKENS = st.sampled_from(
    [
        "NaN",
        "-NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        "1E400",
        "1e-400",
        "-0",
        "-0.0",
        "0e0",
        "9" * 400,
        "123456789012345678901234567890",
        "9223372036854775808",
        "-9223372036854775809",
        "2.5",
        "12.000000000000001",
        "true",
        "false",
        "null",
        '"12"',
        '""',
        '" "',
        "[]",
        "{}",
        "[12.0]",
        '{"tenure": 12.0}',
        '"\\ud800"',
        '"\\udfff\\ud800"',
        '"\\u0000"',
        '"basic\\u0000"',
        '"bas\\u0069c"',
        '"\\ufeffbasic"',
        '"b\\u00e1sic"',
        '"\U0001f600"',
    ]
)
_GOOD_PAIRS = [(json.dumps(k), json.dumps(v)) for k, v in GOOD.items()]
_ODD_KEYS = st.sampled_from(
    [
        '"TENURE"',
        '" tenure"',
        '"tenure "',
        '""',
        '"\\u0074enure"',
        '"\\ud800"',
        '"\\u0000"',
        '"ten\\u0000ure"',
        '"instances"',
        '"x"',
        '"id"',
        '"parameters"',
        '"inputs"',
    ]
)


@st.composite
def _raw_instance(draw: st.DrawFn) -> str:
    """A good instance's JSON text with one to three mutations, as an object or a feature-ordered row."""
    pairs = list(_GOOD_PAIRS)
    for _ in range(draw(st.integers(1, 3))):
        mutation = draw(
            st.sampled_from(
                ["drop", "unknown", "many_unknown", "wrong", "null", "token", "huge_string", "nested", "dup", "key"]
            )
        )
        index = draw(st.integers(0, max(len(pairs) - 1, 0)))
        if mutation == "drop" and pairs:
            del pairs[index]
        elif mutation == "unknown":
            for key in draw(st.lists(st.text(max_size=12), min_size=1, max_size=5)):
                pairs.append((json.dumps(key), draw(_dumps(_SCALARS))))
        elif mutation == "many_unknown":
            count = draw(st.sampled_from([100, 1000, 5000]))
            pairs.extend((f'"extra_{i}"', str(i)) for i in range(count))
        elif mutation == "dup" and pairs:
            key = pairs[index][0]
            pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(_ODD_TOKENS | _dumps(_SCALARS))))
        elif mutation == "key" and pairs:
            pairs[index] = (draw(_ODD_KEYS), pairs[index][1])
        elif pairs:
            key, value = pairs[index]
            if mutation == "wrong":
                value = draw(_dumps(_JSON))
            elif mutation == "null":
                value = "null"
            elif mutation == "token":
                value = draw(_ODD_TOKENS)
            elif mutation == "huge_string":
                value = json.dumps(
                    draw(st.sampled_from(["x", "basic", "\u00e9", "\\"])) * draw(st.sampled_from([10_000, 100_000]))
                )
            else:  # nested
                depth = draw(st.integers(1, 40))
                value = "[" * depth + value + "]" * depth
            pairs[index] = (key, value)
    if draw(st.integers(0, 4)) == 0:  # the row form: values in feature order, no keys
        return "[" + ", ".join(value for _, value in pairs) + "]"
    return "{" + ", ".join(f"{key}: {value}" for key, value in pairs) + "}"


# The content types a V1 body is read as JSON with: kserve's decoder (orjson) or the server's own (json).
_V1_CONTENT_TYPES = ["application/json", "application/json", "text/plain", "application/x-www-form-urlencoded"]


def v1_bodies() -> st.SearchStrategy[_Body]:
    """A V1 request body (sent as JSON, text or form)."""
    return _v1_text().map(_body)


@st.composite
def _v1_text(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["top", "instances", "instance_list", "mutant", "mutant", "mutant", "entity", "keys"]))
    if kind == "top":
        return draw(_dumps(_JSON))
    if kind == "instances":
        return '{"instances": ' + draw(_dumps(_JSON)) + "}"
    if kind == "instance_list":
        return '{"instances": ' + draw(_dumps(st.lists(_JSON, min_size=1, max_size=4))) + "}"
    if kind == "entity":
        ids = draw(
            st.one_of(
                _JSON,
                st.lists(_SCALARS, max_size=5),
                st.lists(st.integers() | st.text(max_size=50), max_size=60),
            )
        )
        body: dict[str, Any] = {"entity_ids": ids}
        if draw(st.booleans()):
            body["instances"] = [GOOD]
        return json.dumps(body, allow_nan=True)
    if kind == "keys":  # good instances plus top-level junk, possibly a duplicated "instances" key
        extra = draw(
            st.lists(
                st.tuples(_ODD_KEYS, _dumps(_JSON)),
                max_size=3,
            )
        )
        members = ['"instances": [' + json.dumps(GOOD) + "]"] + [f"{k}: {v}" for k, v in extra]
        members = draw(st.permutations(members))
        return "{" + ", ".join(members) + "}"
    rows = draw(st.lists(_raw_instance() | st.just(json.dumps(GOOD)), min_size=1, max_size=3))
    return '{"instances": [' + ", ".join(rows) + "]}"


# --- V2 ----------------------------------------------------------------------------------------------

_DATATYPES = st.sampled_from(
    ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
)
_BAD_DATATYPES = st.sampled_from(["fp64", "FP128", "STRING", "", "INT", "OBJECT", "BF16", " FP64"]) | st.text(
    max_size=8
)
_NAMES = st.one_of(
    st.sampled_from([*FEATURES, "input-0", "entity_ids", "", "INPUT", "tenure "]),
    st.text(max_size=10),
    st.none(),
    st.integers(),
    st.lists(st.integers(), max_size=2),
)
_SHAPES = st.one_of(
    st.lists(st.integers(-3, 6), max_size=4),
    st.lists(st.sampled_from([0, 1, 4, -1, 2**31, 2**62, 2**63, 2**64, 10**30, -(2**63)]), min_size=1, max_size=3),
    st.lists(
        st.one_of(st.floats(allow_nan=True), st.text(max_size=3), st.none(), st.booleans()), min_size=1, max_size=3
    ),
    _SCALARS,
)
_BINARYISH = st.binary(max_size=24).map(lambda b: b.decode("latin-1"))
_DATA = st.one_of(
    st.lists(_SCALARS, max_size=6),
    _JSON,
    st.lists(_BINARYISH, max_size=4),
    st.lists(st.lists(_SCALARS, max_size=4), max_size=4),
    st.recursive(
        st.lists(st.floats(-10, 10), max_size=2), lambda inner: st.lists(inner, min_size=1, max_size=2), max_leaves=8
    ),
)
_PARAMETERS = st.one_of(
    _JSON,
    st.fixed_dictionaries(
        {},
        optional={
            "binary_data_size": st.integers(-10, 10**12) | _SCALARS,
            "content_type": st.sampled_from(["str", "pd", "np", "base64"]) | _SCALARS,
            "binary_data": _SCALARS,
            "binary_data_output": _SCALARS,
        },
    ),
)


@st.composite
def _v2_input(draw: st.DrawFn) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "name": draw(_NAMES),
        "shape": draw(_SHAPES),
        "datatype": draw(_DATATYPES | _BAD_DATATYPES | st.none()),
        "data": draw(_DATA),
    }
    if draw(st.integers(0, 3)) == 0:
        tensor["parameters"] = draw(_PARAMETERS)
    for key in draw(st.sets(st.sampled_from(list(tensor)), max_size=1)):  # sometimes a field is missing
        del tensor[key]
    return tensor


def _good_v2(rows: int = 1) -> dict[str, Any]:
    return columnar(pd.DataFrame([GOOD] * rows))


def _matrix(rows: int = 1) -> dict[str, Any]:
    values = [list(GOOD.values())] * rows
    return {"inputs": [{"name": "input-0", "shape": [rows, len(FEATURES)], "datatype": "BYTES", "data": values}]}


@st.composite
def _v2_near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A good per-feature request with one input changed, duplicated or dropped."""
    body = _good_v2(draw(st.integers(1, 3)))
    inputs: list[dict[str, Any]] = body["inputs"]
    index = draw(st.integers(0, len(inputs) - 1))
    change = draw(st.sampled_from(["field", "field", "duplicate", "drop", "replace"]))
    if change == "field":
        field = draw(st.sampled_from(["name", "shape", "datatype", "data", "parameters"]))
        replacement = {"name": _NAMES, "shape": _SHAPES, "datatype": _DATATYPES | _BAD_DATATYPES, "data": _DATA}
        inputs[index] = {**inputs[index], field: draw(replacement.get(field, _PARAMETERS))}
    elif change == "duplicate":
        inputs.insert(draw(st.integers(0, len(inputs))), dict(inputs[index]))
    elif change == "drop":
        del inputs[index]
    else:
        inputs[index] = draw(_v2_input())
    return body


@st.composite
def _v2_matrix(draw: st.DrawFn) -> dict[str, Any]:
    """The single 2-D input form, with its name, shape, datatype or rows changed."""
    rows = draw(st.integers(0, 4))
    tensor: dict[str, Any] = _matrix(max(rows, 1))["inputs"][0]
    tensor["shape"] = draw(st.just([rows, len(FEATURES)]) | st.lists(st.integers(-2, 6), max_size=3) | _SHAPES)
    tensor["datatype"] = draw(st.just("BYTES") | _DATATYPES | _BAD_DATATYPES)
    tensor["name"] = draw(st.just("input-0") | _NAMES)
    data: list[list[Any]] = [list(GOOD.values()) for _ in range(rows)]
    if rows > 0 and draw(st.booleans()):
        row = draw(st.integers(0, rows - 1))
        col = draw(st.integers(0, len(FEATURES)))  # len(FEATURES): the row gets a fifth value
        data[row] = [*data[row][:col], draw(_SCALARS), *data[row][col + 1 :]]
    tensor["data"] = draw(st.just(data) | st.just([v for r in data for v in r]) | _DATA)
    return {"inputs": [tensor]}


def v2_bodies() -> st.SearchStrategy[_Body]:
    """A V2 request body (sent as application/json)."""
    return _v2_text().map(_body)


@st.composite
def _v2_text(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["inputs", "near", "near", "matrix", "matrix", "top"]))
    if kind == "inputs":
        body: Any = {"inputs": draw(st.lists(_v2_input(), max_size=6))}
    elif kind == "near":
        body = draw(_v2_near_valid())
    elif kind == "matrix":
        body = draw(_v2_matrix())
    else:
        body = draw(st.one_of(_JSON, st.fixed_dictionaries({"inputs": _JSON})))
    if isinstance(body, dict) and draw(st.booleans()):
        junk = draw(
            st.fixed_dictionaries(
                {},
                optional={"id": _JSON, "parameters": _PARAMETERS, "outputs": _JSON, "model_name": _JSON},
            )
        )
        body = {**body, **junk}
    return json.dumps(body, allow_nan=True, ensure_ascii=draw(st.booleans()))


# --- raw bodies and content types ------------------------------------------------------------------

_V2_GOOD_JSON = json.dumps(_good_v2())


def _nested(prefix: str, opening: str, depth: int, middle: str, closing: str, suffix: str) -> _Body:
    """A deeply nested JSON text, shown in reports as the expression that builds it."""
    text = prefix + opening * depth + middle + closing * depth + suffix
    recipe = f"({prefix!r} + {opening!r} * {depth} + {middle!r} + {closing!r} * {depth} + {suffix!r}).encode()"
    return _body(text, recipe)


_V2_MATRIX_HEAD = '{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "BYTES", "data": '
_DEEP = [
    _nested("", "[", 5000, "", "]", ""),
    _nested("", '{"a": ', 5000, "1", "}", ""),
    _nested('{"instances": ', "[", 5000, "", "]", "}"),
    _nested('{"instances": [', '{"tenure": ', 3000, "1", "}", "]}"),
    _nested(_V2_MATRIX_HEAD, "[", 5000, "", "]", "}]}"),
    _nested('{"inputs": ', "[", 5000, "", "]", "}"),
    _nested("", "[", 100_000, "", "]", ""),
    _nested("", "[", 100_000, "", "", ""),
    _nested("", '{"x":', 100_000, "", "", ""),
]
_MULTIPART = (
    b'--xyz\r\nContent-Disposition: form-data; name="instances"\r\n\r\n' + GOOD_JSON.encode() + b"\r\n--xyz--\r\n"
)


def _raw_body() -> st.SearchStrategy[_Body]:
    return st.one_of(
        st.binary(max_size=200).map(_body),
        _truncated(),
        st.sampled_from(_DEEP),
        _encoded(),
        st.sampled_from(
            [b"", b" ", b"\n\t", b"null", b"[]", b"{}", b'""', b"0", b"\xef\xbb\xbf{}", _MULTIPART, GOOD_JSON.encode()]
        ).map(_body),
        st.sampled_from([b"instances=1&x=2", b"instances=" + GOOD_JSON.encode(), b"=&&=", b"%ZZ"]).map(_body),
    )


@st.composite
def _truncated(draw: st.DrawFn) -> _Body:
    text = draw(st.sampled_from([GOOD_JSON, _V2_GOOD_JSON, json.dumps(_matrix())]))
    return _body(text[: draw(st.integers(0, len(text) - 1))])


@st.composite
def _encoded(draw: st.DrawFn) -> _Body:
    """A good body in another encoding, with or without a byte order mark."""
    text = draw(st.sampled_from([GOOD_JSON, _V2_GOOD_JSON]))
    encoding = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "latin-1", "cp500"]))
    return _body(text.encode(encoding), f"{text!r}.encode({encoding!r})")


_CONTENT_TYPES = st.one_of(
    st.none(),  # no content-type header at all
    st.sampled_from(
        [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/octet-stream",
            "multipart/form-data; boundary=xyz",
            "multipart/form-data",
            "application/json; charset=utf-8",
            "application/json; charset=utf-16",
            "application/json; charset=latin-1",
            "application/json; charset=bogus",
            'application/json; charset="',
            "application/json;;;",
            "application/json; boundary=xyz; q=0.1",
            "APPLICATION/JSON",
            "application/json, text/plain",
            "application/ld+json",
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
            "text/plain; charset=utf-8",
            "text/plain; charset=\u00e9",
            "text/csv",
            "*/*",
            "",
            "json",
        ]
    ),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x85\xa0"), max_size=30),
)


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[str, str | None, _Body]:
    """(route, content type or None, body)."""
    return draw(st.sampled_from(["v1", "v2"])), draw(_CONTENT_TYPES), draw(_raw_body())


# --- headers -----------------------------------------------------------------------------------------

# Header values requests and http.client will send: latin-1, no CR/LF, no leading whitespace.
_LATIN1 = st.text(st.characters(min_codepoint=0, max_codepoint=0xFF, exclude_characters="\r\n"), max_size=200).map(
    str.lstrip
)
_HEADER_VALUES: st.SearchStrategy[str | bytes] = st.one_of(
    _LATIN1,
    st.just(""),
    st.sampled_from([1000, 8000, 20_000]).map(lambda n: _repeated("r", n)),
    st.text(st.characters(exclude_characters="\r\n"), max_size=60).map(lambda s: s.lstrip().encode()),
    st.sampled_from(["\x00", "\x01\x02\x7f", "id\x1bx", "\u00ff\u00fe", "../../etc/passwd", "%00", "null", "\\"]),
)
_AUTHORIZATION = st.one_of(
    st.sampled_from(
        ["Bearer", "Bearer ", "Bearer \x00", "Basic !!!", _repeated("A", 5000), "Digest x", "", "Negotiate"]
    ),
    _LATIN1.map(lambda s: "Bearer " + s),
)
# kserve reads a request as a binary CloudEvent when ce-specversion, ce-id, ce-source and ce-type are all set.
_CE_HEADERS = st.fixed_dictionaries(
    {
        "ce-specversion": st.sampled_from(["1.0", "0.3", "", "9"]) | _LATIN1,
        "ce-id": _LATIN1,
        "ce-source": _LATIN1,
        "ce-type": _LATIN1,
    },
    optional={
        "ce-time": st.sampled_from(["2024-01-01T00:00:00Z", "yesterday", ""]),
        "ce-contenttype": st.sampled_from(["application/json", "text/plain", "application/cloudevents+json", ""]),
        "ce-dataschema": _LATIN1,
    },
).flatmap(
    lambda ce: st.sets(st.sampled_from(sorted(ce)), max_size=2).map(
        lambda drop: {k: ce[k] for k in ce if k not in drop}
    )
)


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@st.composite
def header_requests(draw: st.DrawFn) -> tuple[str, dict[str, str | bytes], _Body, str]:
    """(route, headers, body, how the body is sent: "plain", "chunked" or "gzip")."""
    route = draw(st.sampled_from(["v1", "v2"]))
    body = _body(GOOD_JSON if route == "v1" else _V2_GOOD_JSON)
    if draw(st.integers(0, 4)) == 0:
        body = draw(_raw_body())
    headers: dict[str, str | bytes] = {}
    content_type = draw(st.sampled_from(["application/json"] * 4 + [None, "text/plain", "application/octet-stream"]))
    if content_type is not None:
        headers["content-type"] = content_type
    for name in draw(
        st.sets(
            st.sampled_from(
                ["x-request-id", "x-request-id", "authorization", "content-encoding", "ce", "v2-binary", "many", "misc"]
            ),
            min_size=1,
            max_size=3,
        )
    ):
        if name == "x-request-id":
            headers["x-request-id"] = draw(_HEADER_VALUES)
        elif name == "authorization":
            headers["authorization"] = draw(_AUTHORIZATION)
        elif name == "content-encoding":
            headers["content-encoding"] = draw(
                st.sampled_from(["gzip", "deflate", "br", "identity", "gzip, gzip", "compress", "zstd", "x"])
            )
        elif name == "ce":
            headers.update(draw(_CE_HEADERS))
        elif name == "v2-binary":
            length = st.integers(-5, len(body) + 5).map(str) | st.sampled_from(["", "x", "1e3", "-0", "9" * 30])
            headers["inference-header-content-length"] = draw(length)
        elif name == "many":
            headers.update({f"x-junk-{i}": "v" * 20 for i in range(draw(st.sampled_from([10, 100])))})
        else:
            headers[draw(st.sampled_from(["accept", "accept-encoding", "expect", "x-forwarded-for", "user-agent"]))] = (
                draw(_HEADER_VALUES)
            )
    how = draw(st.sampled_from(["plain", "plain", "chunked", "gzip"]))
    return route, headers, body, how


# --- the checks --------------------------------------------------------------------------------------


class _Tally:
    """Statuses of one strategy's requests, and answers worth a second look (reported, not failed)."""

    def __init__(self, name: str, session: requests.Session, server: LocalServer) -> None:
        self.name = name
        self.session = session
        self.server = server
        self.dropped_log_rows = _dropped_log_rows(session, server)
        self.statuses: Counter[int] = Counter()
        self.odd: Counter[str] = Counter()
        self.odd_example: dict[str, str] = {}
        self.started = time.perf_counter()

    def check(self, response: requests.Response, what: str) -> None:
        status = response.status_code
        self.statuses[status] += 1
        if status >= 500:  # the server closes the connection after an unhandled error: the next example reconnects
            self.session.close()
        assert status < 500, f"{status} for {what[:2000]}: {response.text[:500]}"
        if 400 <= status < 500:
            try:
                error = response.json()
            except ValueError:
                error = None
            if not (isinstance(error, dict) and "error" in error):
                self._odd(f"{status} without a JSON error body", f"{what} -> {response.text[:120]!r}")
        elif status >= 300:
            self._odd(f"status {status}", what)

    def _odd(self, kind: str, example: str) -> None:
        self.odd[kind] += 1
        self.odd_example.setdefault(kind, example[:600])

    def report(self) -> None:
        seconds = time.perf_counter() - self.started
        print(
            f"\n[measure] fuzz {self.name}: {sum(self.statuses.values())} requests in {seconds:.1f}s: "
            f"{dict(sorted(self.statuses.items()))}"
        )
        for kind, count in self.odd.items():
            print(f"[fuzz] {self.name}: {count} x {kind}, e.g. {self.odd_example[kind]}")
        # Let the inference log flush, so this test's rows are not written in one batch with the next test's.
        time.sleep(LOG_FLUSH_WAIT)
        dropped = _dropped_log_rows(self.session, self.server) - self.dropped_log_rows
        if dropped:
            print(f"[fuzz] {self.name}: the inference log dropped {dropped:g} rows (see the server log)")


def _dropped_log_rows(session: requests.Session, server: LocalServer) -> float:
    metrics = session.get(f"{server.endpoint}/metrics", timeout=TIMEOUT).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("ctpipe_inference_log_dropped_rows_total{")
    )


def _url(server: LocalServer, route: str) -> str:
    if route == "v1":
        return f"{server.endpoint}/v1/models/{server.model_name}:predict"
    return f"{server.endpoint}/v2/models/{server.model_name}/infer"


def _assert_still_serves(session: requests.Session, server: LocalServer, registry: Registry) -> None:
    """A good V1 and V2 request answer the registry model's predictions; the server is live."""
    rows = registry.rows.head(5)
    expected = registry.expected("a", rows)
    by_v1 = v1(session, server, {"instances": instances(rows)})
    assert by_v1.status_code == 200, by_v1.text
    np.testing.assert_allclose(by_v1.json()["predictions"], expected, rtol=1e-9)
    by_v2 = v2(session, server, columnar(rows))
    assert by_v2.status_code == 200, by_v2.text
    np.testing.assert_allclose(by_v2.json()["outputs"][0]["data"], expected, rtol=1e-9)
    live = session.get(f"{server.endpoint}/v2/health/live", timeout=TIMEOUT)
    assert live.status_code == 200, live.text


def _run(tally: _Tally, fuzz: Any, session: requests.Session, server: LocalServer, registry: Registry) -> None:
    """Run the fuzz, report what it saw, and check the server afterwards even when the fuzz failed."""
    try:
        fuzz()
    finally:
        tally.report()
        session.close()  # after a failure the server may have closed the connection: check on a new one
        _assert_still_serves(session, server, registry)


# --- the tests ---------------------------------------------------------------------------------------

# Requests that once got a 5xx, sent on every run whatever the random examples are (hypothesis's explicit phase).
_V2_GOOD_HEAD = _V2_GOOD_JSON.removesuffix("}")
_CE = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"}


@pytest.mark.server
def test_fuzzed_v1_bodies_get_no_5xx(champion_server: LocalServer, registry: Registry) -> None:
    session = requests.Session()
    tally = _Tally("v1 bodies", session, champion_server)
    url = _url(champion_server, "v1")

    @_fuzz(300)
    @given(st.sampled_from(_V1_CONTENT_TYPES), v1_bodies())
    @example("application/json", _body('{"\\u0000": 1}'))
    @example("text/plain", _body(GOOD_JSON.replace('"basic"', '"\\ud800"')))
    def send(content_type: str, body: _Body) -> None:
        response = session.post(url, data=body, headers={"content-type": content_type}, timeout=TIMEOUT)
        tally.check(response, f"V1 {content_type} {body!r}")

    _run(tally, send, session, champion_server, registry)


@pytest.mark.server
def test_fuzzed_v2_bodies_get_no_5xx(champion_server: LocalServer, registry: Registry) -> None:
    session = requests.Session()
    tally = _Tally("v2 bodies", session, champion_server)
    url = _url(champion_server, "v2")

    @_fuzz(300)
    @given(v2_bodies())
    @example(_body('{"inputs": NaN}'))
    @example(_body('{"inputs": "\\ud800"}'))
    @example(_body(_V2_GOOD_HEAD + ', "id": "\\ud800"}'))
    def send(body: _Body) -> None:
        response = session.post(url, data=body, headers={"content-type": "application/json"}, timeout=TIMEOUT)
        tally.check(response, f"V2 application/json {body!r}")

    _run(tally, send, session, champion_server, registry)


@pytest.mark.server
def test_fuzzed_raw_bodies_and_content_types_get_no_5xx(champion_server: LocalServer, registry: Registry) -> None:
    session = requests.Session()
    tally = _Tally("raw bodies and content types", session, champion_server)

    @_fuzz(250)
    @given(raw_requests())
    @example(("v1", "text/plain", _DEEP[0]))
    @example(("v1", "", _DEEP[1]))
    @example(("v1", "application/json; charset=utf-8", _DEEP[0]))
    def send(case: tuple[str, str | None, _Body]) -> None:
        route, content_type, body = case
        headers = {} if content_type is None else {"content-type": content_type}
        response = session.post(_url(champion_server, route), data=body, headers=headers, timeout=TIMEOUT)
        tally.check(response, f"{route} content-type {content_type!r} body {body!r}")

    _run(tally, send, session, champion_server, registry)


@pytest.mark.server
def test_fuzzed_headers_get_no_5xx(champion_server: LocalServer, registry: Registry) -> None:
    session = requests.Session()
    tally = _Tally("headers", session, champion_server)

    @_fuzz(250)
    @given(header_requests())
    @example(("v2", {"inference-header-content-length": "x"}, _body(_V2_GOOD_JSON), "plain"))
    @example(("v1", {**_CE, "ce-contenttype": "application/json"}, _body(GOOD_JSON), "plain"))
    @example(("v1", _CE, _body(b""), "plain"))
    def send(case: tuple[str, dict[str, str | bytes], _Body, str]) -> None:
        route, headers, body, how = case
        data: bytes | Iterator[bytes] = body
        if how == "chunked":  # a generator body: requests sends it with Transfer-Encoding: chunked
            data = _chunks(body, 7)
        elif how == "gzip":
            data = gzip.compress(body)
        response = session.post(_url(champion_server, route), data=data, headers=headers, timeout=TIMEOUT)
        shown = {k: v for k, v in headers.items() if not k.startswith("x-junk-")}
        tally.check(response, f"{route} {how} headers {shown} body {body!r}")

    _run(tally, send, session, champion_server, registry)
