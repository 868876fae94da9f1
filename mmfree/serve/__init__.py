"""mmfree.serve: ``mmfree serve``, an OpenAI-compatible completions endpoint over every backend.

* :mod:`mmfree.serve.engine`: the backends (float model, integer reference, accelerator) behind one
  interface, and the :class:`~mmfree.serve.engine.Engine`: a bounded request queue feeding ONE decode
  loop (one stream at a time, or up to ``--max-streams`` requests sharing every accelerator pass), with limits,
  time-outs and cancellation.
* :mod:`mmfree.serve.app`: the FastAPI application (``/v1/completions``, ``/v1/models``, ``/health``,
  ``/metrics``), SSE streaming.
* :mod:`mmfree.serve.metrics`: the Prometheus metrics.
* :mod:`mmfree.serve.cli`: the ``mmfree serve`` command (uvicorn, SIGTERM drains in-flight requests).

Documentation: docs/serve.md. Nothing here is imported by the rest of mmfree (the app layer sits on top).
"""
