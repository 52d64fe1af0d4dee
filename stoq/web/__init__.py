"""stoq's web front (``stoq serve``): the REST API and what builds on it.

``app.create_app`` makes the ASGI app; ``service`` holds the operations (submit, read, search,
download) the API and the pages share; ``auth`` the tokens, the rate limit and the size cap;
``api`` the ``/api`` routes; ``runner`` the scanning process of embedded mode; ``download`` the
zip a payload is served in; ``pages``, ``pagemodel`` and ``session`` the results view (HTML, its
payload tree, its sign-in cookie and CSRF tokens); ``export_routes`` the STIX and MISP exports. Needs the ``web`` extra (``pip install 'stoq-analysis[web]'``).
"""
