"""The web side: HTTP fetch, per-host politeness, URL keys, IIIF, content sniffing."""
