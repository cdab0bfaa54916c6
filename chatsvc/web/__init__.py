"""The web layer: the JSON API, Server-Sent Events, the WebSocket and the pages.

Every route is declared once, with its request and response types, in the
module named after its resource; validation and /openapi.json both come from
those declarations. Everything that changes data goes through `chatsvc.engine`.
"""
