import sys

from sipfleet.cli import main

sys.exit(main())
