"""The package logger.

Everything the package reports goes through :mod:`logging` under the ``"waddington"`` name, so users control it
with ``logging.getLogger("waddington").setLevel(...)`` the same way as any other library.
"""

import logging

logger = logging.getLogger("waddington")
