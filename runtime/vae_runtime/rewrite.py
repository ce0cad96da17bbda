"""Graphs rewritten as they load, for the CPU at hand and for what is asked of them; the files
are never changed. Both rewrites give the same output bits as the file (tested).

**int8 weights.** An int8 graph multiplies uint8 activations by 8-bit weights (MatMulInteger).
On x86, which sign the weights should have depends on the CPU, not on the file:
- With VNNI (avx512_vnni, avx_vnni), `vpdpbusd` multiplies u8 x s8 exactly and about twice as
  fast as onnxruntime's u8 x u8 kernels: unsigned weights are made signed as the graph loads
  (`signed_weights`). Exact: w - zp == (w - 128) - (zp - 128), so the integer sums, and every
  output, are the same bits.
- Without VNNI, onnxruntime's u8 x s8 kernels add pairs of products in saturating 16-bit
  integers (`vpmaddubsw`): a signed graph is wrong there, an unsigned one exact. The session
  option `session.x64quantprecision` makes onnxruntime turn signed weights unsigned as it loads
  (`exact_option`): a no-op for the graphs vae-export writes, a fix for older or foreign ones.
  (onnxruntime cannot be asked for the reverse, and that option also applies on VNNI CPUs, where
  it halves the speed: hence the rewrite above.)
The files keep unsigned weights (vae_export.precision): exact on every CPU and for every
consumer (Triton, the browser), with the speed-up where this runtime loads them.

**Outputs not asked for.** A graph output cannot share its buffer with another tensor, so the
decoder's `logits` output costs onnxruntime a copy of every batch even when only `image` is
fetched; `without_outputs` drops it from a second session that `Decoder.decode` runs
(vae_runtime.session).

Both edit the serialized ModelProto without the `onnx` package (not a runtime dependency): they
walk the protobuf wire format and write again only what changes, every other byte as it was.
`signed_weights` writes each MatMulInteger's weight and zero-point initializers as INT8
`raw_data` (each value minus 128). Anything it does not expect (external data, a weight read by
another node or declared in the graph's inputs, outputs or value_info, a missing zero point,
subgraphs) leaves the graph as it is: exact, only slower.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

_VNNI_FLAGS = ("avx512_vnni", "avx_vnni")
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_UINT8, _INT8 = 2, 3  # TensorProto.DataType
# Field numbers (onnx.proto3): ModelProto.graph; GraphProto.node, initializer, input, value_info;
# NodeProto.input, op_type, domain; TensorProto.data_type, int32_data, name, raw_data,
# external_data, data_location.
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO = 1, 5, 11, 12, 13
_NODE_INPUT, _NODE_OP_TYPE, _NODE_DOMAIN = 1, 4, 7
_TENSOR_DATA_TYPE, _TENSOR_INT32, _TENSOR_NAME, _TENSOR_RAW = 2, 5, 8, 9
_TENSOR_EXTERNAL, _TENSOR_LOCATION = 13, 14
_VALUE_INFO_NAME = 1
_SUBGRAPH_OPS = ("If", "Loop", "Scan")
_WEIGHT_SLOTS = (1, 3)  # MatMulInteger(A, B, a_zero_point, b_zero_point): B and b_zero_point


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The x86 feature flags Linux reports (/proc/cpuinfo); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def _x86() -> bool:
    return platform.machine().lower() in _X86


def vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether this is an x86 CPU with VNNI: u8 x s8 exact and fastest. `flags`: the CPU's,
    default this machine's."""
    return _x86() and any(f in (cpu_flags() if flags is None else flags) for f in _VNNI_FLAGS)


def exact_option() -> tuple[str, str] | None:
    """The session config entry that makes onnxruntime exact for signed int8 weights here: on
    x86 without VNNI; None elsewhere (ARM's kernels are exact either way and are left alone)."""
    return ("session.x64quantprecision", "1") if _x86() and not vnni() else None


def prepare(data: bytes) -> bytes:
    """The serialized graph to build a session from on this CPU: `signed_weights(data)` on x86
    with VNNI (when the graph has unsigned int8 weights), else `data` itself."""
    if not vnni() or b"MatMulInteger" not in data:
        return data
    return signed_weights(data) or data


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: its tag, length and payload."""
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, tag start, value start, value end) of each field in
    buf[start:end]; the value of a length-delimited field is its payload."""
    pos = start
    while pos < end:
        tag_start = pos
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, after = _varint(buf, pos)
        elif wire == 1:
            after = pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            after = pos + length
        elif wire == 5:
            after = pos + 4
        else:  # groups (3, 4) are not in onnx.proto
            raise ValueError(f"wire type {wire}")
        if after > end:
            raise ValueError("field runs past its message")
        yield number, wire, tag_start, pos, after
        pos = after


def _text(buf: bytes, start: int, end: int) -> str:
    return buf[start:end].decode("utf-8", errors="replace")


def signed_weights(data: bytes) -> bytes | None:
    """`data` (a serialized ModelProto) with each MatMulInteger's uint8 weights and zero points
    made int8 by subtracting 128 from both (the same integer products), or None when there is
    nothing to convert or the graph is laid out in a way this does not handle."""
    return _edit_graph(data, _signed_weights)


def without_outputs(data: bytes, names: set[str]) -> bytes | None:
    """`data` (a serialized ModelProto) with the graph outputs `names` no longer declared as
    outputs (the nodes that make them stay), or None if it declares none of them or is not a
    graph this reads."""
    return _edit_graph(data, lambda d, start, end: _without_outputs(d, start, end, names))


def _edit_graph(data: bytes, edit: Callable[[bytes, int, int], bytes | None]) -> bytes | None:
    """`data` with its one GraphProto replaced by edit(data, graph start, graph end), every other
    byte kept; None where the edit returns None or `data` is not the protobuf it should be (then
    onnxruntime will say what is wrong with it)."""
    try:
        graphs = [f for f in _fields(data, 0, len(data)) if f[0] == _MODEL_GRAPH and f[1] == 2]
        if len(graphs) != 1:
            return None
        _, _, tag, start, end = graphs[0]
        graph = edit(data, start, end)
    except ValueError:
        return None
    return None if graph is None else data[:tag] + _field(_MODEL_GRAPH, graph) + data[end:]


def _without_outputs(data: bytes, g_start: int, g_end: int, names: set[str]) -> bytes | None:
    fields = list(_fields(data, g_start, g_end))
    kept = [
        data[tag:end]
        for number, wire, tag, start, end in fields
        if not (number == _GRAPH_OUTPUT and wire == 2 and _value_name(data, start, end) in names)
    ]
    return None if len(kept) == len(fields) else b"".join(kept)  # None: none of them declared


def _signed_weights(data: bytes, g_start: int, g_end: int) -> bytes | None:
    nodes: list[tuple[str, list[str]]] = []  # (op_type, with its domain if not ONNX's; inputs)
    declared: set[str] = set()  # names in the graph's inputs, outputs or value_info
    tensors: dict[str, tuple[int, int, np.ndarray | None]] = {}  # name -> (start, end, uint8s)
    repeated: set[str] = set()
    for number, wire, _, start, end in _fields(data, g_start, g_end):
        if wire != 2:
            continue
        if number == _GRAPH_NODE:
            nodes.append(_node(data, start, end))
        elif number in (_GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO):
            declared.add(_value_name(data, start, end))
        elif number == _GRAPH_INITIALIZER:
            name, values = _uint8_tensor(data, start, end)
            if name in tensors:
                repeated.add(name)
            tensors[name] = (start, end, values)
    # B and b_zero_point of each MatMulInteger with uint8 weights: both or neither.
    convert: dict[str, np.ndarray] = {}
    for op, inputs in nodes:
        if op != "MatMulInteger" or len(inputs) < 2 or inputs[1] not in tensors:
            continue
        weights = tensors[inputs[1]][2]
        if weights is None:
            continue  # int8 already, or not a tensor this handles
        point = tensors[inputs[3]][2] if len(inputs) > 3 and inputs[3] in tensors else None
        if point is None:
            return None  # no zero point (0, which has no int8 twin) or not a uint8 one
        convert[inputs[1]], convert[inputs[3]] = weights, point
    if not convert or convert.keys() & (declared | repeated):
        return None
    if any(op in _SUBGRAPH_OPS for op, _ in nodes):  # their bodies may read the weights too
        return None
    for op, inputs in nodes:  # a converted tensor read anywhere else would change that reader
        for slot, name in enumerate(inputs):
            if name in convert and (op != "MatMulInteger" or slot not in _WEIGHT_SLOTS):
                return None
    new: dict[int, bytes] = {}  # an initializer's payload start -> its int8 payload
    for name, values in convert.items():
        start, end, _ = tensors[name]
        kept = b"".join(
            data[tag:e]
            for n, _, tag, _, e in _fields(data, start, end)
            if n not in (_TENSOR_DATA_TYPE, _TENSOR_INT32, _TENSOR_RAW)
        )
        signed = (values ^ np.uint8(0x80)).tobytes()  # x - 128 as int8: the same bits as x ^ 0x80
        new[start] = kept + bytes([_TENSOR_DATA_TYPE << 3, _INT8]) + _field(_TENSOR_RAW, signed)
    return b"".join(
        _field(_GRAPH_INITIALIZER, new[s]) if s in new else data[tag:e]
        for _, _, tag, s, e in _fields(data, g_start, g_end)
    )


def _value_name(data: bytes, start: int, end: int) -> str:
    """A ValueInfoProto's name."""
    for n, w, _, s, e in _fields(data, start, end):
        if n == _VALUE_INFO_NAME and w == 2:
            return _text(data, s, e)
    return ""


def _node(data: bytes, start: int, end: int) -> tuple[str, list[str]]:
    """A NodeProto's op_type (prefixed with its domain unless ONNX's) and inputs."""
    op, domain, inputs = "", "", []
    for n, w, _, s, e in _fields(data, start, end):
        if w != 2:
            continue
        if n == _NODE_INPUT:
            inputs.append(_text(data, s, e))
        elif n == _NODE_OP_TYPE:
            op = _text(data, s, e)
        elif n == _NODE_DOMAIN:
            domain = _text(data, s, e)
    return (op if domain in ("", "ai.onnx") else f"{domain}.{op}"), inputs


def _uint8_tensor(data: bytes, start: int, end: int) -> tuple[str, np.ndarray | None]:
    """A TensorProto's name and, for a UINT8 tensor whose values are in the file (raw_data or
    int32_data, each 0..255), those values; None for any other."""
    name, dtype, raw, ints, elsewhere = "", 0, None, [], False
    for n, w, _, s, e in _fields(data, start, end):
        if n == _TENSOR_NAME and w == 2:
            name = _text(data, s, e)
        elif n == _TENSOR_DATA_TYPE and w == 0:
            dtype = _varint(data, s)[0]
        elif n == _TENSOR_RAW and w == 2:
            raw = np.frombuffer(data, dtype=np.uint8, count=e - s, offset=s)
        elif n == _TENSOR_INT32 and w == 2:  # packed (proto3's default)
            pos = s
            while pos < e:
                value, pos = _varint(data, pos)
                ints.append(value)
        elif n == _TENSOR_INT32 and w == 0:
            ints.append(_varint(data, s)[0])
        elif n in (_TENSOR_EXTERNAL, _TENSOR_LOCATION):
            elsewhere = True
    if dtype != _UINT8 or elsewhere or (raw is not None and ints):
        return name, None
    if raw is not None:
        return name, raw
    values = np.array(ints, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 255):
        return name, None
    return name, values.astype(np.uint8)
