"""What a transform did: nodes rewritten, nodes skipped with the reason, and size/time deltas,
printed as one line so a pipeline's log reads like a table."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs


def label(node: gs.Node | gs.Tensor | str) -> str:
    """The name reports use for a node: its name, or `Op->first_output` when unnamed."""
    if isinstance(node, str):
        return node
    if node.name or not isinstance(node, gs.Node):
        return node.name
    # Unnamed nodes are known by what they compute: `BatchNormalization->y`.
    return f"{node.op}->{node.outputs[0].name}" if node.outputs else f"<unnamed {node.op}>"


@dataclass
class TransformReport:
    """Filled by the transform (rewritten, skipped, notes) and by run_pipeline (the stats)."""

    name: str
    verb: str = "rewrote"
    rewritten: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0
    params_before: int = 0
    params_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    # Set by a transform that changes the graph without a per-node rewrite (e.g. a rename).
    modified: bool = False

    def rewrote(self, node: gs.Node | gs.Tensor | str) -> None:
        self.rewritten.append(label(node))

    def skip(self, node: gs.Node | gs.Tensor | str, reason: str) -> None:
        self.skipped.append((label(node), reason))

    skipped_node = skip

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def changed(self) -> bool:
        """Whether the graph may differ; run_pipeline returns the input model when none did."""
        return self.modified or bool(self.rewritten)

    def __str__(self) -> str:
        if self.notes and not (self.rewritten or self.skipped or self.modified):
            return f"{self.name}: " + "; ".join(self.notes)  # a query: its answer
        text = f"{self.name}: {self.verb} {len(self.rewritten)}"
        if self.skipped:
            shown = ", ".join(f"{node}: {why}" for node, why in self.skipped[:3])
            more = f", +{len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            text += f", skipped {len(self.skipped)} ({shown}{more})"
        if self.nodes_before or self.nodes_after:
            text += f"  nodes {self.nodes_before}→{self.nodes_after}"
            # A step that added nodes says so: "folded 3" must not read as a smaller graph.
            text += " (grew)" if self.nodes_after > self.nodes_before else ""
        if self.params_before != self.params_after:
            text += f"  params {self.params_before}→{self.params_after}"
        return text + f"  {self.seconds:.2f}s"

    def details(self) -> str:
        """The one-line summary, then every skip reason and note on its own line."""
        lines = [str(self)]
        lines += [f"  skipped {node}: {why}" for node, why in self.skipped]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)
