"""`python -m runtime.doctor CONFIG` on every rank (what `xgen doctor …` scripts launch)."""

import sys

from runtime.doctor.bandwidth import main

sys.exit(main(sys.argv[1:]))
