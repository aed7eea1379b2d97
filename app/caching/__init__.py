"""Answers kept between requests, and one source call per key at a time."""
