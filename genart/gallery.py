"""`python -m genart.gallery`: a sweep's HTML gallery (genart.tools.gallery)."""

import sys

from genart.tools.gallery import main

if __name__ == "__main__":
    sys.exit(main())
