"""`python -m harness` (what torchrun runs on every rank): the `harness` command."""

import sys

from harness.commands.cli import main

sys.exit(main())
