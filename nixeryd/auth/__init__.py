"""
Private instances: who may pull what.

Off by default (anonymous pulls).  When configured, every ``/v2`` request
is authenticated (HTTP Basic against an htpasswd file, or a bearer token
from nixeryd's own token endpoint or an external token service), then
authorised by image name (token scopes, the rules file), and content by
digest is served under a name only when an image of that name refers to
it.  :mod:`nixeryd.auth.gate` is what the HTTP side asks.
"""
