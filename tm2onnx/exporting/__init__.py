"""Export: the TracedModule walk, the context converters emit through, call shapes, batch probing,
guards and targets; `converters/` holds one registry of op converters."""
