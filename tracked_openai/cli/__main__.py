"""``python -m tracked_openai.cli``: the ``tracked-openai`` command without its script."""

import sys

from . import main

sys.exit(main())
