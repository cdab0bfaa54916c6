"""The engine: rows, answers, checkpoints, leases, events and followers.

It knows nothing of HTTP: it takes settings and connections, and the web layer
(`chatsvc.web`) calls it. The rule "the engine never imports the web layer" is
an import-linter contract in pyproject.toml, checked by scripts/test.
"""
