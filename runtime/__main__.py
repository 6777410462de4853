"""`python -m runtime train CFG` (what generated scripts run under torch.distributed.run)."""

import sys

from runtime.cli import main

sys.exit(main())
