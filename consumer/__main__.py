"""`python -m consumer` runs the same CLI as `tim-recall`."""

from consumer.ops.cli import main

main()
