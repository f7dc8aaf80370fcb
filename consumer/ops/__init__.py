"""What operators run and read: the CLI, dead-letter and results tools, the demo, health."""
