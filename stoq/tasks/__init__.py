"""The Celery side of stoq: the app, the plugin-to-task adapter, the publisher and the connector chain.

Importing ``stoq`` never imports this package; ``celery -A stoq`` does (see ``stoq.__getattr__``).
"""
