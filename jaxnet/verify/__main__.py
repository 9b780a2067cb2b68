"""python -m jaxnet.verify: see jaxnet.verify.cli."""

import sys

from jaxnet.verify.cli import main

sys.exit(main())
