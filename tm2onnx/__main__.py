"""`python -m tm2onnx` runs the CLI."""

import sys

try:  # Ctrl-C while the CLI's own imports load: exit as main() would, without a traceback
    from .cli import main
except KeyboardInterrupt:
    print("tm2onnx: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
