"""Exposing the server safely: TLS/mTLS, bearer tokens with roles, admission control, limits.

- :mod:`.tls`: server credentials from ``--tls-cert``/``--tls-key``/``--tls-client-ca``.
- :mod:`.tokens`: the hashed token file; :mod:`.auth`: the interceptor checking roles.
- :mod:`.admission`: ``--max-inflight`` examples, ``--max-streams``, expired deadlines.
- :mod:`.limits`: per-example bounds; :mod:`.decoding`: undecodable bytes -> INVALID_ARGUMENT.
- :mod:`.layer`: :func:`~.layer.build_security` assembles them for :mod:`labelwatch.server`.

docs/security.md is the user's guide.
"""
