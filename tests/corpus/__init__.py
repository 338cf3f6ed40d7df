"""Loaders for public third-party request corpora, fetched at test time (never committed).

gunicorn_corpus: gunicorn's parser fixtures (tests/requests/), MIT, from its PyPI sdist.
"""
