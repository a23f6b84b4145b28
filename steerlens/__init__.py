"""The `steerlens` command line: one entry point with a subcommand per job (`steerlens --help`).

Layout: `cli` (the parser, error handling, `main`), `errors` (what counts as bad input and how it
reads in one line), `commands/` (one module per subcommand: `add_arguments(parser)` and
`run(args, **kw)`, each a thin layer over one library call). scripts/*.py are wrappers over the
same modules. argparse lives only here and in scripts/; the library packages never parse flags.
"""
