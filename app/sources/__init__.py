"""Where recommendations come from: Personalize, a batch output, and the guard around them."""
