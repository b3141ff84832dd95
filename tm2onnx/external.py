"""ONNX external data without a second copy of the weights: the written model is a header
built field by field beside the caller's model, each tensor's bytes streamed to the data file."""

from __future__ import annotations

from typing import BinaryIO

import onnx
import onnx.numpy_helper
from google.protobuf.message import Message

PROTOBUF_LIMIT = 2**31 - 1   # protobuf refuses to serialize a message of 2 GiB or more
EXTERNAL_THRESHOLD = 1024    # bytes: smaller tensors stay inline (shape inference reads them)


def too_large(model: onnx.ModelProto, margin: int = 1 << 26) -> bool:
    """Whether `model` would pass protobuf's 2 GB limit inline (weights are summed first:
    ByteSize itself fails on such a model)."""
    weights = sum(nbytes(t) for t in model.graph.initializer
                  if t.data_location != onnx.TensorProto.EXTERNAL)
    if weights > PROTOBUF_LIMIT - margin:
        return True
    try:
        return model.ByteSize() > PROTOBUF_LIMIT - margin
    except Exception:  # noqa: BLE001 - protobuf's EncodeError: too large to measure
        return True


def nbytes(tensor: onnx.TensorProto) -> int:
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return 0
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def external_header(model: onnx.ModelProto, stream: BinaryIO, location: str
                    ) -> onnx.ModelProto:
    """`model` with every initializer of EXTERNAL_THRESHOLD bytes or more written to
    `stream` (named `location` beside the model) and referenced from the returned header."""
    header = onnx.ModelProto()
    _copy_fields(model, header, skip="graph")
    _copy_fields(model.graph, header.graph, skip="initializer")
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.STRING or nbytes(tensor) < EXTERNAL_THRESHOLD:
            header.graph.initializer.add().CopyFrom(tensor)
            continue
        data = tensor.raw_data if tensor.HasField("raw_data") else \
            onnx.numpy_helper.to_array(tensor).tobytes()
        offset = stream.tell()
        stream.write(data)
        stub = header.graph.initializer.add(name=tensor.name, data_type=tensor.data_type,
                                            doc_string=tensor.doc_string)
        stub.dims.extend(tensor.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)),
                           ("length", str(len(data)))):
            stub.external_data.add(key=key, value=value)
        del data  # one tensor's bytes at a time
    return header


def _copy_fields(source: Message, target: Message, *, skip: str) -> None:
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        if isinstance(value, Message):
            getattr(target, descriptor.name).CopyFrom(value)
        elif hasattr(value, "extend"):  # a repeated field
            getattr(target, descriptor.name).extend(value)
        else:
            setattr(target, descriptor.name, value)
