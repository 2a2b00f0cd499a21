"""The ``sparseyolo`` command line: one entry, one module per subcommand."""
