"""One reader per log format; each returns schema rows in chunks with its files' accounting."""
