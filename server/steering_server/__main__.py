"""`python -m steering_server`, the same as `steering-server`."""

import sys

from steering_server.cli import main

sys.exit(main())
