"""`python -m codeunlearn ...`: the command line, for launchers that take a module (`torchrun -m codeunlearn`)."""

import sys

from codeunlearn.cli import main

sys.exit(main())
