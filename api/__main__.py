"""`python -m api`: the `quotad` command with `serve`, like the installed script."""

import sys

from api.cli import main

if __name__ == "__main__":
    sys.exit(main())
