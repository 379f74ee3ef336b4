"""``python -m goalgen.data.synthetic``: the ``goalgen-synth`` CLI."""

import sys

from goalgen.data.synthetic import main

sys.exit(main())
