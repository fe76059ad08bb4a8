"""Data: record formats, the shipped sources (one declaration each), prompts, validation."""
