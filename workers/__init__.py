"""fax-outbox processes and thin adapters: Celery tasks, the relay, servers and the CLI.

Depends on `outbox`; `outbox` never imports from here.
"""
