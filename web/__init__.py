"""The demo page: a small HTTP front that lets people try the classifier in a browser.

`python -m web` serves one page and a JSON API over the gateway's gRPC API (see README, "Demo
page"). It holds no model: every answer comes from the gateway, so the page shows exactly what
gRPC clients get.
"""
