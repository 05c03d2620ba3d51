"""Files on disk: atomic writes (files.py) and the cache folder by kind (cachedir.py)."""
