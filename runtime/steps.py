"""Distances between quantized tensors counted in quantization steps (|diff| / scale), the
grid (scale) each ONNX tensor lies on, and tie-aware top-1 agreement of quantized scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx.numpy_helper

# Ops whose output lies on their first input's grid (same scale): exact copies or selections
# (the exporter's QDQ converters re-quantize through the same set: converters/_qdq.ON_GRID).
KEEP_GRID = frozenset({"Identity", "MaxPool", "Relu", "Reshape", "Flatten", "Transpose",
                       "Squeeze", "Unsqueeze", "DepthToSpace", "SpaceToDepth", "Expand", "Tile",
                       "Slice", "Gather"})
# Two values on one grid differ by an integer number of steps, up to float error (~1e-5 for
# |q| <= 255); more than this fraction of a step means the two sides quantize on different grids.
GRID_SLACK = 1e-3
# Ops whose output is a mean or a selection of its inputs' values, with no weights: one step of
# a quantized input moves their output by at most one step of it, so a float tensor made by them
# from quantized tensors (an int8 average pool onnxruntime keeps unrounded) is judged in steps.
AVERAGING = KEEP_GRID | {"AveragePool", "GlobalAveragePool", "ReduceMean", "Resize", "Concat"}
MIN_CLASSES = 10  # top-1 is reported for (N, C) outputs with at least this many classes


def activation_grids(model: onnx.ModelProto) -> dict[str, float]:
    """Tensor name -> scale for each tensor made by a per-tensor DequantizeLinear of an
    activation (not of a weight), or by a chain of grid-keeping ops from one."""
    inits = {init.name: init for init in model.graph.initializer}
    made = {out: node for node in model.graph.node for out in node.output if out}
    grids: dict[str, float] = {}

    def grid(name: str, depth: int = 0) -> float | None:
        if name in grids or depth > 64:
            return grids.get(name)
        node = made.get(name)
        scale = None
        if node is not None and node.op_type == "DequantizeLinear":
            if node.input[0] not in inits and node.input[1] in inits:
                values = onnx.numpy_helper.to_array(inits[node.input[1]])
                scale = float(values.reshape(-1)[0]) if values.size == 1 else None
        elif node is not None and node.op_type in KEEP_GRID and node.input:
            scale = grid(node.input[0], depth + 1)
        if scale is not None:
            grids[name] = scale
        return scale

    for name in made:
        grid(name)
    return grids


def averaged_grids(model: onnx.ModelProto, grids: dict[str, float] | None = None
                   ) -> dict[str, float]:
    """Tensor name -> the largest scale of the quantized tensors it averages or selects, for each
    tensor off every grid made only through AVERAGING ops from tensors on a grid."""
    grids = activation_grids(model) if grids is None else grids
    inits = {init.name for init in model.graph.initializer}
    found: dict[str, float] = {}
    for node in model.graph.node:  # topological: every input is decided before its consumers
        sources = [name for name in node.input if name and name not in inits]
        scales = [grids.get(name, found.get(name)) for name in sources]
        if node.op_type in AVERAGING and sources and None not in scales:
            found.update({out: max(scales) for out in node.output[:1] if out not in grids})
    return found


def has_activation_qdq(model: onnx.ModelProto) -> bool:
    """Whether the model quantizes activations (a DequantizeLinear of a computed tensor)."""
    inits = {init.name for init in model.graph.initializer}
    return any(node.op_type == "DequantizeLinear" and node.input[0] not in inits
               for node in model.graph.node)


@dataclass(frozen=True)
class StepCount:
    """How many elements of a tensor are 0, 1 and more steps apart, summed over samples."""

    size: int = 0
    exact: int = 0
    one: int = 0
    beyond: int = 0
    max_steps: float = 0.0
    off_grid: float = 0.0   # largest distance of |diff| / scale from an integer

    @property
    def on_grid(self) -> bool:
        return self.off_grid <= GRID_SLACK

    def fraction(self, count: int) -> float:
        return count / self.size if self.size else 0.0

    def __add__(self, other: StepCount) -> StepCount:
        return StepCount(self.size + other.size, self.exact + other.exact, self.one + other.one,
                         self.beyond + other.beyond, max(self.max_steps, other.max_steps),
                         max(self.off_grid, other.off_grid))

    def __str__(self) -> str:
        grid = "" if self.on_grid else f", OFF GRID by {self.off_grid:.3g} step"
        return (f"max {self.max_steps:.3g} step(s): {self.fraction(self.exact):.3%} equal, "
                f"{self.fraction(self.one):.3%} one step, {self.fraction(self.beyond):.3%} more"
                + grid)

    def to_dict(self) -> dict:
        return {"elements": self.size, "max_steps": self.max_steps,
                "exact_fraction": self.fraction(self.exact),
                "one_step_fraction": self.fraction(self.one),
                "beyond_fraction": self.fraction(self.beyond), "one_step_elements": self.one,
                "beyond_elements": self.beyond, "on_grid": self.on_grid,
                "off_grid": self.off_grid}


def count_steps(reference: np.ndarray, actual: np.ndarray, scale: float) -> StepCount:
    """Steps between two tensors that should lie on the grid of `scale`."""
    steps = np.abs(np.asarray(actual, np.float64) - np.asarray(reference, np.float64)) / scale
    if not np.isfinite(steps).all():
        steps = np.nan_to_num(steps, nan=np.inf)
    near = np.round(steps)
    finite = np.isfinite(steps)
    off = float(np.abs(steps - near)[finite].max(initial=0.0))
    return StepCount(int(steps.size), int(np.sum(near == 0)), int(np.sum(near == 1)),
                     int(np.sum(near > 1)), float(near.max(initial=0.0)), off)


def top1_hits(reference: np.ndarray, actual: np.ndarray) -> tuple[int, int] | None:
    """(rows agreeing, rows) for (N, C) scores with C >= MIN_CLASSES. Quantized scores tie
    often (equal integers): a row agrees when the reference's score at the actual argmax is
    the reference's maximum."""
    if reference.ndim != 2 or reference.shape[1] < MIN_CLASSES or actual.shape != reference.shape:
        return None
    chosen = np.take_along_axis(reference, actual.argmax(axis=1)[:, None], axis=1)[:, 0]
    return int(np.sum(chosen == reference.max(axis=1))), int(reference.shape[0])


@dataclass(frozen=True)
class OutputSteps:
    """End to end (no forcing): one quantized graph output over all runs."""

    name: str
    scale: float
    count: StepCount
    top1: tuple[int, int] | None = None

    def merged(self, other: OutputSteps) -> OutputSteps:
        top1 = (None if self.top1 is None or other.top1 is None else
                (self.top1[0] + other.top1[0], self.top1[1] + other.top1[1]))
        return OutputSteps(self.name, self.scale, self.count + other.count, top1)

    def row(self) -> str:
        top1 = (f"  top-1 {self.top1[0] / self.top1[1]:.1%} of {self.top1[1]}"
                if self.top1 else "")
        return f"  {self.name:<28} step {self.scale:<10.4g} {self.count}{top1}"

    def to_dict(self) -> dict:
        top1 = None if self.top1 is None else {"agree": self.top1[0], "rows": self.top1[1],
                                               "fraction": self.top1[0] / self.top1[1]}
        return {"name": self.name, "scale": self.scale, **self.count.to_dict(), "top1": top1}


def output_steps(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray],
                 grids: dict[str, float]) -> dict[str, OutputSteps]:
    """OutputSteps of each output on a grid (one run)."""
    found = {}
    for name, ref in reference.items():
        got = actual.get(name)
        if name in grids and got is not None and np.shape(got) == np.shape(ref):
            ref, got = np.asarray(ref), np.asarray(got)
            found[name] = OutputSteps(name, grids[name], count_steps(ref, got, grids[name]),
                                      top1_hits(ref, got))
    return found
