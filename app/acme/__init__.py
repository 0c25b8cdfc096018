"""The ACME protocol: the client that talks to any ACME directory, and the challenge
providers that prove control of a domain (HTTP-01 tokens on given hosts, DNS-01 by
RFC 2136 updates).  Nothing here reads the database: which names to prove, where,
is the certificates service's business."""
