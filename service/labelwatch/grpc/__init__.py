"""gRPC glue: servicers that only translate (via :mod:`labelwatch.codec`), the status table."""
