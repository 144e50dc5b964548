"""``mtl serve``: a web page and a JSON API that run one trained model on uploaded scans.

Modules: :mod:`~mtl.serve.uploads` (type by content, size and decompression limits, a
server-owned input file), :mod:`~mtl.serve.service` (upload -> findings, masks, overlays, with
the per-case core of ``mtl infer``, :mod:`mtl.infer.core`), :mod:`~mtl.serve.results` (results in memory under random
ids, bounded and expiring), :mod:`~mtl.serve.app` (the FastAPI app: Host and Origin checks,
the upload queue), :mod:`~mtl.serve.deadline` (a deadline for receiving each request) and
:mod:`~mtl.serve.command` (the ``serve`` click command). The page is ``static/index.html``.
"""
