"""Label Studio, both ways: annotation webhooks in, results and pre-annotations out.

* :mod:`.webhook`: a webhook payload -> :class:`~labelwatch.domain.LabeledExample`.
* :mod:`.processor`: a bounded queue scored through the server's batcher.
* :mod:`.writeback`: label quality and suggestions written back to the task.
* :mod:`.ml_backend`: Label Studio's ML backend protocol (pre-annotation).
* :mod:`.http`: the HTTP server on ``--http-port`` that serves all of it.
"""
