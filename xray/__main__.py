import sys

from xray.cli import main

sys.exit(main())
