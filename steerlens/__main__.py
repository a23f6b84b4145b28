"""`python -m steerlens ...` (e.g. under `torchrun -m steerlens train ...`) is the `steerlens` command."""

from steerlens.cli import main

raise SystemExit(main())
