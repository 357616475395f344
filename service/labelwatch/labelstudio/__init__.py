"""Label Studio, both ways: every line of labelwatch that talks to Label Studio lives here.

In (annotations to score) and back (results, pre-annotations, tasks to review):

* :mod:`.webhook`: a webhook payload -> inbox rows -> :class:`~labelwatch.domain.LabeledExample`.
* :mod:`.processor`: the events stored in the outbox, scored through the server's batcher.
* :mod:`.leases`: who holds a stored event or write-back; a killed process's are freed.
* :mod:`.writeback`: label quality and suggestions written back to the task.
* :mod:`.writequeue`: the durable write-back queue (in the outbox) and its worker.
* :mod:`.ml_backend`: Label Studio's ML backend protocol (pre-annotation).
* :mod:`.http`: the HTTP server on ``--http-port`` that serves all of it.
* :mod:`.sink`: the flag sink that imports flagged examples as tasks to review.
* :mod:`.client`: the REST client every part above uses.
* :mod:`.connect` and :mod:`.command`: ``labelwatch label-studio connect``.

Its metrics are in :mod:`labelwatch.metrics.label_studio`, its tables in
:mod:`labelwatch.outbox.writeback` and :mod:`labelwatch.outbox.ls_events`.
"""
