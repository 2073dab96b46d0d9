"""`python -m quotad`, the same as the `quotad` command."""

import sys

from quotad.cli import main

# Guarded: the tree scanner's forkserver workers import `__main__` again, and
# that import must not start a second command.
if __name__ == "__main__":
    sys.exit(main())
