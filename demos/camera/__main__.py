"""`python -m demos.camera`: the same as the `snrt-demo` command."""

import sys

from .app import main

sys.exit(main())
