"""The service's persistence: SQLAlchemy models and the operations web and worker share.
No Flask and no Celery here."""
