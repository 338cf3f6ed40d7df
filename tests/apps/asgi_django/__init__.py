"""A minimal Django project served through get_asgi_application() (test_asgi.py)."""
