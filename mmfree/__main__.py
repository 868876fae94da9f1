import sys

from mmfree.cli import main

sys.exit(main())
