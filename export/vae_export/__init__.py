"""mnist-vae's exporter: model.pt -> encoder.onnx + decoder.onnx + manifest.json, verified."""
