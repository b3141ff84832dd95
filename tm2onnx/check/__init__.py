"""Checking an exported model: MegEngine-side and ONNX-side validation, per-tensor localization,
quantization-aware comparison and other toolchains."""
