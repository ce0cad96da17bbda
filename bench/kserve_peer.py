"""KServe's own Python model server as a peer of vae-serve: the same decoder.onnx under onnxruntime.

    <kserve venv>/bin/python bench/kserve_peer.py --onnx decoder.onnx --http_port PORT

Run by bench/serve_peers.py in a venv of its own (KServe is never in mnist-vae's extras); it
imports only kserve, onnxruntime and numpy. The model is `decoder` (V2 input `z`, output
`image`), served by `kserve.ModelServer` with KServe's defaults except: gRPC off (the bench
drives HTTP), bound to 127.0.0.1 (KServe's REST server hard-codes 0.0.0.0: uvicorn's Config is
given the loopback address here), no log line per request (latency, trace and access logs at
warning: vae-serve runs without its access log in the bench too).
The session runs on one thread, as vae-serve's graphs do (`--threads 1`, its default).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server


class Decoder(Model):  # type: ignore[misc]
    """Latents z (N, latent) in, images (N, 1, 28, 28) out, as the V2 `decoder` model."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.session: ort.InferenceSession | None = None

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = "image"  # exports with the optional logits output have two
        self.ready = True
        return self.ready

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        assert self.session is not None
        z = np.asarray(payload.inputs[0].as_numpy(), dtype=np.float32)
        (images,) = self.session.run([self.output], {self.input: z})
        binary = payload.use_binary_outputs
        for asked in payload.request_outputs or []:
            if asked.binary_data is not None:
                binary = asked.binary_data
        out = InferOutput(name="image", shape=list(images.shape), datatype="FP32")
        out.set_data_from_numpy(images, binary_data=binary)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=[out],
            use_binary_outputs=binary,
        )


def _loopback_only() -> None:
    """Every uvicorn server of this process listens on 127.0.0.1 alone."""
    init = uvicorn.Config.__init__

    def loopback(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = "127.0.0.1"
        init(self, *args, **kwargs)

    uvicorn.Config.__init__ = loopback  # type: ignore[method-assign]


def main() -> None:
    _loopback_only()
    parser = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__)
    parser.add_argument("--onnx", required=True, help="the decoder graph")
    args: Any
    args, _ = parser.parse_known_args()
    model = Decoder("decoder", args.onnx)
    model.load()
    server = ModelServer(
        http_port=args.http_port, workers=1, enable_grpc=False, enable_latency_logging=False
    )
    for name in ("uvicorn.access", "kserve.trace"):  # after ModelServer set up the logging
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
