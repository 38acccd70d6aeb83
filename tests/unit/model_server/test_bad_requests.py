"""Request decoding (V1 and V2): every class of bad request is a 4xx naming the problem, and fuzzing finds no 5xx."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.common.server_process import LocalServer
from tests.serving_helpers import FEATURES, GOOD, GOOD_JSON, MAX_ROWS, Registry, columnar, instances, v1, v2

BAD_REQUESTS: list[tuple[str, str, Any, list[str]]] = [
    ("wrong content type", "v1:text/csv", "tenure,charges\n1,2\n", ["415", "text/csv", "application/json"]),
    ("xml content type", "v1:application/xml", GOOD_JSON, ["415", "application/xml"]),
    # Python's JSON reader accepts NaN/Infinity; the model server reads strict JSON, whatever the content type.
    ("NaN as text/plain", "v1:text/plain", GOOD_JSON.replace("12.0", "NaN"), ["not valid JSON", "NaN", "finite"]),
    ("Infinity as text/plain", "v1:text/plain", GOOD_JSON.replace("70.5", "-Infinity"), ["Infinity", "finite"]),
    ("huge number", "v1", GOOD_JSON.replace("70.5", "1e999"), ["not valid JSON", "number"]),
    ("oversized batch", "v1", {"instances": [GOOD] * (MAX_ROWS + 1)}, ["413", f"{MAX_ROWS + 1} rows", "at most"]),
    ("unknown model name", "v1:model=nosuchmodel", {"instances": [GOOD]}, ["404", "nosuchmodel"]),
    ("entity ids without feature store", "v1", {"entity_ids": [1, 2]}, ["entity ids", "instances"]),
    (
        "v2 oversized batch",
        "v2",
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [MAX_ROWS + 1, 4],
                    "datatype": "BYTES",
                    "data": [[12.0, 70.5, 2, "basic"]] * (MAX_ROWS + 1),
                }
            ]
        },
        ["413", "at most"],
    ),
    (
        "v2 NaN",
        "v2",
        {
            "inputs": [
                {**i, "data": [float("nan")]} if i["name"] == "charges" else i
                for i in columnar(pd.DataFrame([GOOD]))["inputs"]
            ]
        },
        ["NaN", "finite"],
    ),
    ("v2 malformed JSON", "v2", '{"inputs": [', []),
    ("missing feature", "v1", {"instances": [{k: v for k, v in GOOD.items() if k != "calls"}]}, ["missing", "calls"]),
    ("extra feature", "v1", {"instances": [{**GOOD, "zodiac": "leo"}]}, ["unknown", "zodiac"]),
    ("string for number", "v1", {"instances": [{**GOOD, "tenure": "twelve"}]}, ["tenure", "number"]),
    ("number for category", "v1", {"instances": [{**GOOD, "plan": 3}]}, ["plan", "string"]),
    ("fraction for integer", "v1", {"instances": [{**GOOD, "calls": 2.5}]}, ["calls", "integer"]),
    ("null value", "v1", {"instances": [{**GOOD, "charges": None}]}, ["charges", "null"]),
    # kserve decodes the body before the model sees it and names the JSON error itself.
    (
        "NaN literal",
        "v1",
        '{"instances": [{"tenure": NaN, "charges": 1, "calls": 1, "plan": "basic"}]}',
        ["not valid JSON"],
    ),
    ("empty batch", "v1", {"instances": []}, ["empty"]),
    ("malformed JSON", "v1", '{"instances": [', ["not valid JSON"]),
    ("no instances key", "v1", {"rows": []}, ["instances"]),
    ("instance not an object", "v1", {"instances": [42]}, ["instance 0"]),
    ("short row", "v1", {"instances": [[1.0, 2.0]]}, ["2 values", "expected 4"]),
    (
        "v2 missing input",
        "v2",
        {"inputs": [i for i in columnar(pd.DataFrame([GOOD]))["inputs"] if i["name"] != "plan"]},
        ["missing", "plan"],
    ),
    (
        "v2 unequal lengths",
        "v2",
        {
            "inputs": [
                {**i, "shape": [2], "data": i["data"] * 2} if i["name"] == "plan" else i
                for i in columnar(pd.DataFrame([GOOD]))["inputs"]
            ]
        },
        ["different lengths"],
    ),
    (
        "v2 text for number",
        "v2",
        {
            "inputs": [
                {**i, "datatype": "BYTES", "data": ["x"]} if i["name"] == "charges" else i
                for i in columnar(pd.DataFrame([GOOD]))["inputs"]
            ]
        },
        ["charges", "number"],
    ),
    (
        "v2 shape disagrees with data",
        "v2",
        {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "BYTES", "data": [1, 2, 3, 4]}]},
        ["shape"],
    ),
]


@pytest.mark.server
@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_is_4xx_naming_the_problem(
    champion_server: LocalServer, case: tuple[str, str, Any, list[str]]
) -> None:
    _, protocol, body, words = case
    session = requests.Session()
    protocol, _, option = protocol.partition(":")
    if protocol == "v1" and option.startswith("model="):
        response = v1(session, champion_server, body, model=option.removeprefix("model="))
    elif protocol == "v1":
        response = v1(session, champion_server, body, content_type=option or "application/json")
    else:
        response = v2(session, champion_server, body)
    assert 400 <= response.status_code < 500, response.text
    text = f"{response.status_code} {response.text}"
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"
    good = v1(session, champion_server, {"instances": [GOOD]})
    assert good.status_code == 200 and good.json()["model_version"] == "1"


_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)


_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


_FEATURE_NAMES = st.sampled_from([*FEATURES, "zodiac", "", "instances"])


@st.composite
def bad_requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(route, content type, body): broken instances, V2 tensors, raw bytes and content types."""
    kind = draw(st.sampled_from(["v1_value", "v1_keys", "v1_any", "v2", "bytes"]))
    route = "v2" if kind == "v2" else "v1"
    content_type = "application/json"
    if kind == "v1_value":
        instance = {**GOOD, draw(st.sampled_from(FEATURES)): draw(_JSON_VALUES)}
        body: Any = {"instances": [instance] * draw(st.integers(0, 3))}
    elif kind == "v1_keys":
        instance = draw(st.dictionaries(_FEATURE_NAMES, _JSON_SCALARS, max_size=6))
        body = {draw(st.sampled_from(["instances", "entity_ids", "inputs"])): [instance]}
    elif kind == "v1_any":
        body = draw(_JSON_VALUES)
    elif kind == "v2":
        inputs = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "name": _FEATURE_NAMES,
                        "shape": st.lists(st.integers(-2, 5), max_size=3),
                        "datatype": st.sampled_from(["FP64", "INT64", "BYTES", "BOOL", "FP32", "NOPE"]),
                        "data": st.lists(_JSON_SCALARS, max_size=6),
                    }
                ),
                max_size=5,
            )
        )
        body = {"inputs": inputs}
    else:
        content_type = draw(st.sampled_from(["application/json", "text/plain", "text/csv", "application/octet-stream"]))
        return route, content_type, draw(st.binary(max_size=64))
    return route, content_type, json.dumps(body, allow_nan=True).encode()


@pytest.mark.server
def test_fuzzed_bad_requests_never_get_a_5xx(champion_server: LocalServer, registry: Registry) -> None:
    session = requests.Session()
    answered: Counter[int] = Counter()
    base = champion_server.endpoint

    @settings(
        max_examples=1500,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run: a failure can be reproduced
        suppress_health_check=list(HealthCheck),
    )
    @given(bad_requests())
    def send(case: tuple[str, str, bytes]) -> None:
        route, content_type, body = case
        url = f"{base}/v1/models/solo:predict" if route == "v1" else f"{base}/v2/models/solo/infer"
        response = session.post(url, data=body, headers={"content-type": content_type}, timeout=10)
        answered[response.status_code] += 1
        assert response.status_code < 500, (
            f"{response.status_code} for {route} {content_type} {body[:200]!r}: " + (response.text[:300])
        )

    started = time.perf_counter()
    send()
    print(f"\n[measure] {sum(answered.values())} fuzzed requests in {time.perf_counter() - started:.1f}s: {answered}")
    assert sum(answered.values()) >= 1000
    assert sum(n for code, n in answered.items() if 400 <= code < 500) > 0.9 * sum(answered.values())
    rows = registry.rows.head(3)
    good = v1(session, champion_server, {"instances": instances(rows)})
    assert good.status_code == 200
    np.testing.assert_allclose(good.json()["predictions"], registry.expected("a", rows), rtol=1e-12)


def test_columns_from_v2_rejects_duplicates_and_bad_shapes() -> None:
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferInput, InferRequest

    from components.common.model_input import Feature
    from serving.decoding import Tensor, columns_from_v2, tensors_from_json, tensors_from_request, to_frame

    features = [Feature("x", "number"), Feature("c", "string")]
    ok = InferRequest(
        "m",
        [InferInput("x", [2, 1], "FP64", [[1.0], [2.0]]), InferInput("c", [2], "BYTES", ["a", "b"])],
    )
    frame = to_frame(columns_from_v2(tensors_from_request(ok), features), features)
    assert list(frame.columns) == ["x", "c"] and frame["x"].dtype == np.float64
    as_json, _ = tensors_from_json(
        {
            "inputs": [
                {"name": "x", "shape": [2, 1], "datatype": "FP64", "data": [[1.0], [2.0]]},
                {"name": "c", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
            ]
        }
    )
    pd.testing.assert_frame_equal(to_frame(columns_from_v2(as_json, features), features), frame)
    with pytest.raises(InvalidInput, match="datatype BOOL; a number feature takes FP64"):
        columns_from_v2([Tensor("x", [1], [1.0], "BOOL"), Tensor("c", [1], ["a"])], features)
    duplicate = [Tensor("x", [1], [1.0], "FP64"), Tensor("x", [1], [1.0], "FP64")]
    with pytest.raises(InvalidInput, match="more than once"):
        columns_from_v2(duplicate, features)
    with pytest.raises(InvalidInput, match="no inputs"):
        columns_from_v2([], features)
    with pytest.raises(InvalidInput, match=r"\[rows, 2\]"):
        columns_from_v2([Tensor("input-0", [1, 3], [1.0, 2.0, 3.0])], features)
    with pytest.raises(InvalidInput, match="nested deeper"):
        columns_from_v2([Tensor("x", [1], [[[[[[[[[[1.0]]]]]]]]]], "FP64"), Tensor("c", [1], ["a"])], features)
    # Linear in the number of inputs: 30,000 duplicates are named in a short message.
    many = [Tensor(f"n{i % 15000}", [1], [1.0]) for i in range(30_000)]
    with pytest.raises(InvalidInput) as refused:
        columns_from_v2(many, features)
    assert "and 14990 more" in str(refused.value) and len(str(refused.value)) < 1500
