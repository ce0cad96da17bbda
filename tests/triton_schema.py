"""Triton's ModelConfig message, from the model_config_pb2.py that tritonclient ships (loaded by
file path: importing tritonclient.grpc would need grpcio, the generated module needs protobuf
only). `PB2.ModelConfig()` parses config.pbtxt and the JSON form of `GET .../config` alike."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def _model_config_pb2() -> ModuleType:
    spec = importlib.util.find_spec("tritonclient")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


PB2 = _model_config_pb2()
