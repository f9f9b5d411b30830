"""One module per ``nerfmae`` subcommand (each defines ``register(subparsers)``), and the flags
the commands that run a trained network share."""


def add_network_flags(parser) -> None:
    """``--device`` and ``--alpha-step`` of a command that runs a checkpoint's network."""
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--alpha-step", type=float,
                        help="re-express grids' alpha for this step (world units) first "
                             "(default: the checkpoint's convention; 0.01 for published "
                             "files)")  # fmt: skip


def add_window_flag(parser) -> None:
    """``--window-overlap`` of a command that runs a detector over whole scenes."""
    parser.add_argument("--window-overlap", type=float,
                        help="scenes larger than the network's cube are read through cubes "
                             "overlapping by this share of their edge (default: the run's "
                             "window_overlap, 0.5)")  # fmt: skip
