"""`python -m modelreg_server` is `modelreg-server`."""

import sys

from modelreg_server.cli import main

sys.exit(main())
