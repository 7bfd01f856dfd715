"""`python -m costpipe.cli`: the same as the `costpipe` command."""

from costpipe.cli import main

main()
