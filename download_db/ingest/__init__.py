"""Ingest stage: read multimedia.txt, rows to distinct images, load, legacy import."""
