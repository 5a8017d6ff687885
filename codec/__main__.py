"""`python -m codec` runs the CLI, e.g. under `torchrun -m codec train codec ...`."""

from .cli import main

main()
