"""`python -m genart.bench`: the speed benchmark (genart.tools.bench)."""

import sys

from genart.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
