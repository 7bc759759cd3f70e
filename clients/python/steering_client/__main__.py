"""`python -m steering_client`: the same as the `steering-client` command."""

import sys

from steering_client.cli import main

sys.exit(main())
