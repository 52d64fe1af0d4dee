"""The plugins bundled with stoq, installed as the package ``stoq_plugins``.

Each is registered through the ``stoq.plugins`` entry-point group in ``pyproject.toml``, exactly as a
third-party plugin package would be. Modules whose names start with ``_`` hold the parsing helpers
the plugins call; they are plain code with no plugin API.
"""
