"""`python -m harness` (what torchrun runs on every rank): the `harness` command."""

import sys

from harness.cli import main

sys.exit(main())
