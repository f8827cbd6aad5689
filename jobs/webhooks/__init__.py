"""Webhooks: Standard Webhooks signing, target checks, the delivery outbox, attempts and endpoints.

Plain functions over a session; the API routes and the Celery task are thin adapters over them.
``signing`` imports only the standard library, so receivers (``vidq.client.verify_webhook``) can
use it without the service's dependencies.
"""
