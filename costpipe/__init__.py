"""costpipe: CLI, settings and the local Kafka broker that the pipeline packages share."""

__version__ = "0.1.0"
