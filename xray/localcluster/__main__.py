import sys

from xray.localcluster.controlplane import main

sys.exit(main(sys.argv[1:]))
