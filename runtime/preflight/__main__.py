"""`python -m runtime.preflight CONFIG --node-rank N …` (what the generated scripts run on each node)."""

import sys

from runtime.preflight.run import main

sys.exit(main())
