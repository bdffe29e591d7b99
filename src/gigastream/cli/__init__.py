"""Command-line interface: one thin module per subcommand (see :mod:`gigastream.cli.main`)."""
