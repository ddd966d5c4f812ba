"""``python -m fusionrec.serving BUNDLE [options]``: ``fusionrec serve`` without the training stack."""

import sys

from fusionrec.serving.command import main

sys.exit(main())
