"""Stand-ins for the AWS services the project calls, speaking their real wire protocols (stdlib only)."""
