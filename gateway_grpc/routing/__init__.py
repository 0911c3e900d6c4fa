"""Protocol packages of the router, one folder per API version."""
