"""``python -m chainspec.distributed``: the torchrun self-check (see :func:`chainspec.distributed.main`)."""

import sys

from . import main

sys.exit(main())
