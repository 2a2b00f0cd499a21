"""The package logger. Library code logs; only the CLI configures handlers."""

import logging

LOGGER = logging.getLogger("sparseyolo")
