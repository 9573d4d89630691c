"""Trained members as artifacts: checkpoints, TorchScript and ONNX export, the one loader, the stacked ensemble."""
