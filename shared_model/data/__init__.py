"""The ground floor: every log format read into one event schema, with full row accounting."""
