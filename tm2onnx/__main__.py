"""`python -m tm2onnx` runs the CLI."""

import sys

from .cli import main

sys.exit(main())
