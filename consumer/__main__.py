"""`python -m consumer` runs the same CLI as `tim-recall`."""

from consumer.cli import main

main()
