"""ACME glue: the client that talks to any ACME directory, and the challenge
providers that prove control of a domain (HTTP-01 on the fleet, DNS-01 through a
DNS provider)."""
