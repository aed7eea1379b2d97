"""Events back to Personalize: POST /events, its durable queue, and Braze Currents ingestion."""
