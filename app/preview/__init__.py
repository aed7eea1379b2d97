"""GET /preview: a QA page showing what recipients will get, through the same code as GET /recommendations."""
