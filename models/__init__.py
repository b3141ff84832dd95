"""Golden models for tm2onnx: module definitions (`nets`, `archs`) and their generator."""
