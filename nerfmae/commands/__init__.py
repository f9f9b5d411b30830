"""One module per ``nerfmae`` subcommand; each defines ``register(subparsers)``."""
