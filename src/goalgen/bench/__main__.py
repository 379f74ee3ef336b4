"""``python -m goalgen.bench`` = ``goalgen-bench``."""

import sys

from goalgen.bench.cli import main

sys.exit(main())
