"""``python -m parallel_orchestrator`` is the same command line as ``parallel-orchestrator``."""

from .cli import main

raise SystemExit(main())
