"""gRPC glue: servicers that only translate, converters, the error -> status table."""
