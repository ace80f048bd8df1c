#!/usr/bin/env python
"""The example project's manage.py: ``python manage.py demo`` runs it offline end to end;
``runserver`` and ``celery -A aiflow worker`` run it for real (see examples/README.md)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aiflow.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
