"""MQTT accounts and access control for the gateway broker.

* `credentials` — the credentials file (argon2id hashes, atomic 0600 writes, roles
  `device`/`operator`), managed by `fieldlink gateway devices` (`cli`);
* `authenticator.Authenticator` — verifies CONNECT credentials with a process-lifetime cache
  so reconnect storms are cheap;
* `acl.Acl` — who publishes/subscribes where; decides which PUBLISHes are sensor readings and
  which device the topic names;
* `topics` — MQTT topic-filter algebra shared with the broker.
"""

from gateway.auth.acl import ANONYMOUS, DEVICE, OPERATOR, Acl, AclSettings, PublishGrant
from gateway.auth.authenticator import Authenticator
from gateway.auth.credentials import Account

__all__ = ["ANONYMOUS", "DEVICE", "OPERATOR", "Account", "Acl", "AclSettings", "Authenticator",
           "PublishGrant"]
