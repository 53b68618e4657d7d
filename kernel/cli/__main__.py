"""``python -m kernel.cli``: the same as the ``revkernel`` script."""

from kernel.cli import main

main()
