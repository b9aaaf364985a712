"""``python -m chainspec.distributed``: the torchrun self-check (see :func:`chainspec.distributed.selfcheck.main`)."""

import sys

from .selfcheck import main

sys.exit(main())
