import sys

from timm_rspc.cli import main

sys.exit(main())
