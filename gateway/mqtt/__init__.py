"""The gateway's MQTT 3.1.1 broker: devices publish readings (acknowledged only after the
pipeline committed them), local subscribers (operators, dashboards, actuators) get full broker
semantics.  Design and measurements: docs/mqtt-ingest.md.

Public API: `MqttServer`, its settings (`MqttSettings`, `TlsListener`, `TlsSettings`,
`WebSocketListener`, `AclSettings`) and `Message` (what internal subscribers receive).
"""

from gateway.auth.acl import AclSettings
from gateway.mqtt.router import Message
from gateway.mqtt.server import MqttServer
from gateway.mqtt.settings import MqttSettings, TlsListener, TlsSettings, WebSocketListener

__all__ = ["AclSettings", "Message", "MqttServer", "MqttSettings", "TlsListener", "TlsSettings",
           "WebSocketListener"]
