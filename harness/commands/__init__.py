"""The `harness` command: the parser (cli.py) and one module per subcommand, each thin: parse, call the engine,
print."""
