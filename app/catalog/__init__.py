"""The item catalog, and the files the service reads (path, file://, s3://, https://), kept fresh."""
