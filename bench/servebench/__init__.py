"""Building blocks of ``bench/serve.py``, the serving benchmark.

* :mod:`servebench.workloads`: the models (default text model, a float-input model,
  probability-only artifacts for K classes) and the rows every measurement sends;
* :mod:`servebench.limit`: the in-process limit (onnxruntime + labelwatch scoring);
* :mod:`servebench.servers`: labelwatch and MLServer as subprocesses, their memory;
* :mod:`servebench.clients`: the client processes and one measurement cell;
* :mod:`servebench.peer`: the peer's V2 protocol stubs and its cleanlab scoring;
* :mod:`servebench.report`: medians, ratios, the table.
"""
