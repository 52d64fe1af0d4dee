#!/usr/bin/env python3
"""Admin entry onto the same commands as ``stoq``: ``python manage.py db upgrade``, ``python manage.py list``."""

from stoq.cli import main

if __name__ == "__main__":
    main()
