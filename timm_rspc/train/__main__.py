import sys

from timm_rspc.train import main

sys.exit(main())
