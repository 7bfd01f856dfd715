"""The ground layer: settings, Kafka client configuration, money, limits and metric
families. It imports nothing else of costpipe, so every other layer can import it."""
