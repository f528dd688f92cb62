"""``python -m tfos.cli`` (driver machine)."""

import sys

from tfos.cli import main

sys.exit(main())
