"""`python -m genart.presets`: list presets, save a run as one (genart.tools.presets)."""

import sys

from genart.tools.presets import main

if __name__ == "__main__":
    sys.exit(main())
