"""splitbench's harness: the model IR (``model``), the controller, the worker and the network (see ARCHITECTURE.md)."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the repository: conf/, and where workers are started from
