"""avindex.tools: the command line and the operator's tools around the service.

The `avindex` entry point (`cli.py`) and the commands that are not the service itself: running
and re-indexing the daemon from the command line, search and embedding from the shell, the
one-command demo, and the small pieces tests, benchmarks and the demo share (the Tansu broker
launcher, Kafka topic helpers, child processes, metrics scraping, synthetic media). Torch is
imported only by the subcommands that train or export, and only when they are chosen.
"""
