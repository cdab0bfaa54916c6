"""`python -m chatsvc`."""

from chatsvc.cli import main

main()
