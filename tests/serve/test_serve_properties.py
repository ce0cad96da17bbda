"""Whatever bytes a client sends, vae-serve answers a 4xx in the protocol's one-line JSON error
form (never a 500) and serves the next good request: property tests drawing arbitrary bytes and
Unicode for every header it interprets, every query parameter and every JSON field of an
inference request. The app runs in-process, driven through ASGI directly (raw header bytes,
raw query strings and bodies reach it as any HTTP server would pass them)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from serve_support import LATENT, MAX_BATCH

from vae_runtime.sampling import sample_latents

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, dict[bytes, bytes], bytes]
INFER = "/v2/models/decoder/infer"
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Header values: any bytes (ASGI hands them over as bytes; Starlette reads them as latin-1),
# any Unicode (surrogates included) as UTF-8, and the values parsers get wrong.
TRICKY = [
    b"",
    b" ",
    b"-1",
    b"0",
    b"+5",
    b"0x10",
    b"1e3",
    b"1_0",
    b" 12 ",
    b"\x00",
    b"\xb2",  # latin-1 superscript two: str.isdigit() says yes, int() says no
    "١٢".encode(),  # Arabic-Indic digits: int() reads them
    b"9" * 5000,  # past int()'s 4,300-digit limit
    b"18446744073709551617",
    b"NaN",
    b"Infinity",
    b"gzip, deflate",
    b"GZIP",
]
unicode = st.text(st.characters(exclude_categories=()), max_size=40)
header_values = st.one_of(
    st.sampled_from(TRICKY),
    st.binary(max_size=40),
    unicode.map(lambda s: s.encode("utf-8", "surrogatepass")),
)
# Query values: any Unicode percent-encoded, and the tricky ones.
query_values = st.one_of(
    st.sampled_from([t.decode("latin-1") for t in TRICKY] + ["nan", "inf", "-inf", "1e400"]),
    unicode,
)
# JSON values of every kind, numbers at and past every limit included.
json_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),  # NaN and Infinity: non-standard literals
    st.sampled_from([0, -1, 1, 2**63, -(2**63) - 1, 10**400, 1.5, -0.0, 1e308]),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), json_numbers, unicode),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(unicode, inner, max_size=4)
    ),
    max_leaves=20,
)


class Asgi:
    """The app under an event loop of its own, lifespan run: one request at a time."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.lifespan = app.router.lifespan_context(app)
        self.loop.run_until_complete(self.lifespan.__aenter__())

    def close(self) -> None:
        self.loop.run_until_complete(self.lifespan.__aexit__(None, None, None))
        self.loop.close()

    def call(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Headers = (),  # type: ignore[assignment]
        query: bytes = b"",
    ) -> Answer:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": quote(path).encode(),
            "query_string": query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in headers],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        half = len(body) // 2
        chunks = [
            {"type": "http.request", "body": body[:half], "more_body": True},
            {"type": "http.request", "body": body[half:], "more_body": False},
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return chunks.pop(0) if chunks else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        self.loop.run_until_complete(self.app(scope, receive, send))
        start = sent[0]
        content = b"".join(m.get("body", b"") for m in sent[1:])
        return start["status"], dict(start["headers"]), content


@pytest.fixture(scope="module")
def asgi(export_dir: Path) -> Iterator[Asgi]:
    from vae_serve.app import ServeConfig, create_app

    config = ServeConfig(
        onnx_dir=export_dir, max_batch=MAX_BATCH, max_body_bytes=1 << 20, max_grid=16
    )
    server = Asgi(create_app(config))
    yield server
    server.close()


def assert_answered(answer: Answer) -> None:
    """A 2xx, or a 4xx whose body is {"error": "<one line>"}; never a 5xx."""
    status, headers, body = answer
    assert status < 500, body
    if status >= 400:
        assert headers.get(b"content-type") == b"application/json", headers
        error = orjson.loads(body)
        assert list(error) == ["error"], body
        assert isinstance(error["error"], str) and error["error"], body
        assert "\n" not in error["error"] and "\r" not in error["error"], body


def still_serves(asgi: Asgi) -> None:
    status, _, body = asgi.call("POST", INFER, good_json())
    assert status == 200, body
    assert orjson.loads(body)["outputs"][0]["shape"] == [2, 1, 28, 28]


def good_request(batch: int = 2) -> dict[str, Any]:
    z = sample_latents(batch, LATENT, 0)
    tensor = {"name": "z", "datatype": "FP32", "shape": [batch, LATENT]}
    return {
        "id": "one",
        "inputs": [{**tensor, "data": z.ravel().tolist()}],
        "outputs": [{"name": "image", "parameters": {"binary_data": False}}],
        "parameters": {"binary_data_output": False},
    }


def good_json() -> bytes:
    return orjson.dumps(good_request())


def good_binary() -> tuple[bytes, int]:
    """A binary-tensor request body and its JSON header's length."""
    z = sample_latents(2, LATENT, 1)
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "z",
                    "datatype": "FP32",
                    "shape": [2, LATENT],
                    "parameters": {"binary_data_size": z.nbytes},
                }
            ],
            "outputs": [{"name": "image"}],
            "parameters": {"binary_data_output": True},
        }
    )
    return head + z.tobytes(), len(head)


def test_the_good_requests_pass(asgi: Asgi) -> None:
    still_serves(asgi)
    body, length = good_binary()
    status, headers, reply = asgi.call(
        "POST", INFER, body, [(b"inference-header-content-length", str(length).encode())]
    )
    assert status == 200, reply
    size = int(headers[b"inference-header-content-length"])
    images = np.frombuffer(reply[size:], "<f4")
    assert images.size == 2 * 28 * 28 and np.all((images >= 0) & (images <= 1))


@FAST
@given(value=header_values)
@example(value=b"\xb2")
@example(value=b"9" * 5000)
def test_content_length(asgi: Asgi, value: bytes) -> None:
    body = good_json()
    answer = asgi.call("POST", INFER, body, [(b"content-length", value)])
    assert_answered(answer)
    if value.strip() == str(len(body)).encode():
        assert answer[0] == 200
    still_serves(asgi)


@FAST
@given(value=header_values)
@example(value=b"\xb2")
@example(value="١٢".encode())
@example(value=b"9" * 5000)
def test_inference_header_content_length(asgi: Asgi, value: bytes) -> None:
    body, length = good_binary()
    answer = asgi.call("POST", INFER, body, [(b"inference-header-content-length", value)])
    assert_answered(answer)
    if value == str(length).encode():
        assert answer[0] == 200
    still_serves(asgi)


@FAST
@given(value=header_values, body=st.one_of(st.binary(max_size=200), st.just(good_json())))
def test_content_encoding(asgi: Asgi, value: bytes, body: bytes) -> None:
    answer = asgi.call("POST", INFER, body, [(b"content-encoding", value)])
    assert_answered(answer)
    still_serves(asgi)


@FAST
@given(name=st.binary(min_size=1, max_size=30), value=header_values)
@example(name=b"content-type", value=b"\xff\x00")
@example(name=b"accept", value=b"text/html")
def test_headers_it_does_not_read_change_nothing(asgi: Asgi, name: bytes, value: bytes) -> None:
    """Content-Type, Accept and any other header: not interpreted, the request still works."""
    if name.lower() in (b"content-length", b"content-encoding", b"inference-header-content-length"):
        return
    status, _, body = asgi.call("POST", INFER, good_json(), [(name, value)])
    assert status == 200, body


@FAST
@given(
    key=st.sampled_from(["seed", "rows", "cols", "temperature"]),
    value=query_values,
    repeat=st.booleans(),
)
@example(key="seed", value="9" * 5000, repeat=False)
@example(key="temperature", value="nan", repeat=False)
@example(key="rows", value="١٢", repeat=False)
def test_samples_query(asgi: Asgi, key: str, value: str, repeat: bool) -> None:
    encoded = quote(value, safe="", errors="surrogatepass").encode()
    query = b"rows=2&cols=2&" + key.encode() + b"=" + encoded
    if repeat:
        query += b"&" + key.encode() + b"=1"
    answer = asgi.call("GET", "/samples.png", query=query)
    assert_answered(answer)
    if answer[0] == 200:
        assert answer[2].startswith(b"\x89PNG")
    still_serves(asgi)


@FAST
@given(query=st.binary(max_size=80))
@example(query=b"seed=%ff%fe&rows=%00")
@example(query=b"unknown=1")
def test_samples_raw_query(asgi: Asgi, query: bytes) -> None:
    assert_answered(asgi.call("GET", "/samples.png", query=query))
    still_serves(asgi)


@FAST
@given(name=unicode)
def test_model_names_in_the_path(asgi: Asgi, name: str) -> None:
    name = name.encode("utf-8", "replace").decode()  # what a server's unquote() yields
    for path in (f"/v2/models/{name}/infer", f"/v2/models/{name}/versions/{name}/infer"):
        assert_answered(asgi.call("POST", path, good_json()))
    still_serves(asgi)


def dumps(value: Any) -> bytes:
    """JSON as a careless client writes it: NaN and Infinity literals, lone surrogates."""
    return json.dumps(value, allow_nan=True).encode()


# Where a drawn value replaces part of a good request: a path of keys and indexes.
JSON_FIELDS: list[tuple[str | int, ...]] = [
    (),
    ("id",),
    ("inputs",),
    ("inputs", 0),
    ("inputs", 0, "name"),
    ("inputs", 0, "datatype"),
    ("inputs", 0, "shape"),
    ("inputs", 0, "shape", 0),
    ("inputs", 0, "shape", 1),
    ("inputs", 0, "data"),
    ("inputs", 0, "data", 0),
    ("inputs", 0, "parameters"),
    ("inputs", 0, "parameters", "binary_data_size"),
    ("outputs",),
    ("outputs", 0),
    ("outputs", 0, "name"),
    ("outputs", 0, "parameters"),
    ("outputs", 0, "parameters", "binary_data"),
    ("parameters",),
    ("parameters", "binary_data_output"),
]


def replaced(request: Any, path: tuple[str | int, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = list(request) if isinstance(request, list) else dict(request)
    copy[head] = replaced(
        request[head] if head in request or isinstance(head, int) else {}, rest, value
    )  # type: ignore[index, operator]
    return copy


@pytest.mark.parametrize("field", JSON_FIELDS, ids=lambda f: ".".join(map(str, f)) or "body")
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=json_values)
def test_json_fields(asgi: Asgi, field: tuple[str | int, ...], value: Any) -> None:
    body = dumps(replaced(good_request(), field, value))
    assert_answered(asgi.call("POST", INFER, body))
    still_serves(asgi)


@pytest.mark.parametrize("name", ["seed", "count", "temperature"])
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=json_values, datatype=st.sampled_from(["INT64", "FP64", "FP32", "BOOL"]))
def test_sampler_fields(asgi: Asgi, name: str, data: Any, datatype: str) -> None:
    inputs = {
        "seed": {"name": "seed", "datatype": "INT64", "shape": [1], "data": [3]},
        "count": {"name": "count", "datatype": "INT64", "shape": [1], "data": [2]},
        "temperature": {"name": "temperature", "datatype": "FP64", "shape": [1], "data": [1.0]},
    }
    inputs[name] = {**inputs[name], "datatype": datatype, "data": data}
    body = dumps({"inputs": list(inputs.values())})
    assert_answered(asgi.call("POST", "/v2/models/sampler/infer", body))
    still_serves(asgi)


@FAST
@given(
    body=st.one_of(
        st.binary(max_size=300), unicode.map(lambda s: s.encode("utf-8", "surrogatepass"))
    )
)
def test_any_body(asgi: Asgi, body: bytes) -> None:
    assert_answered(asgi.call("POST", INFER, body))
    still_serves(asgi)


@FAST
@given(tail=st.binary(max_size=64), size=json_values)
def test_binary_data_size_against_the_bytes_that_follow(asgi: Asgi, tail: bytes, size: Any) -> None:
    head = dumps(
        {
            "inputs": [
                {
                    "name": "z",
                    "datatype": "FP32",
                    "shape": [1, LATENT],
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    )
    length = str(len(head)).encode()
    answer = asgi.call("POST", INFER, head + tail, [(b"inference-header-content-length", length)])
    assert_answered(answer)
    still_serves(asgi)


GOOD = good_json().decode()
HOSTILE: list[bytes] = [
    b"[" * 100_000 + b"]" * 100_000,  # nested past any parser's depth
    b'{"inputs": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 20], "data": '
    + b"[" * 500
    + b"0"
    + b"]" * 500
    + b"}]}",
    GOOD.replace('"id":"one"', '"id":"one","id":"two"').encode(),  # duplicate keys
    GOOD.replace('"inputs":', '"inputs":[],"inputs":').encode(),
    GOOD.replace('"id":"one"', '"id":"\\ud800"').encode(),  # a lone surrogate
    GOOD.replace('"id":"one"', '"id":"\\u0000"').encode(),
    GOOD.replace('"id":"one"', '"id":NaN').encode(),
    GOOD.replace(f'"shape":[2,{LATENT}]', f'"shape":[2.0,{LATENT}]').encode(),
    GOOD.replace(f'"shape":[2,{LATENT}]', f'"shape":[-2,{LATENT}]').encode(),
    GOOD.replace(f'"shape":[2,{LATENT}]', f'"shape":[true,{LATENT}]').encode(),
    GOOD.replace(f'"shape":[2,{LATENT}]', f'"shape":[{10**30},{LATENT}]').encode(),
    GOOD.replace(f'"shape":[2,{LATENT}]', f'"shape":[{2**63},{LATENT}]').encode(),
    GOOD.replace('"data":[', '"data":[Infinity,').encode(),
    GOOD.replace('"data":[', '"data":[1e999,').encode(),
    GOOD.replace('"data":[', f'"data":[{10**30},').encode(),
    GOOD.encode() + b"\x00",
    b"\xef\xbb\xbf" + GOOD.encode(),  # a byte-order mark
    GOOD.encode("utf-16"),
]


@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_json(asgi: Asgi, body: bytes) -> None:
    answer = asgi.call("POST", INFER, body)
    assert_answered(answer)
    still_serves(asgi)


def test_nan_is_refused_as_data_not_decoded(asgi: Asgi) -> None:
    request = good_request(1)
    request["inputs"][0]["data"] = [math.nan] * LATENT
    status, _, body = asgi.call("POST", INFER, dumps(request))
    assert status == 400 and b"JSON" in body


def test_byte_count_headers_read_ascii_digits_only() -> None:
    """codec.header_int: the one reading of Content-Length and Inference-Header-Content-Length."""
    from vae_serve.codec import RequestError, header_int

    for text in ("\xb2", "9" * 5000, "١٢", "-1", "+1", "0x1", "1_0", ""):
        with pytest.raises(RequestError, match="Content-Length"):
            header_int("Content-Length", text)
    assert header_int("Content-Length", " 7\t") == 7
