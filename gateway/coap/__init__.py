"""CoAP ingress: `async with CoapServer(CoapSettings(...), ingest=pipeline) as coap: ...`.

`gateway.coap.server` holds the component (and its acknowledgement guarantee);
`gateway.coap.mapping` the pure decisions (content-format hints, response codes, limits).
See docs/coap-serial.md.
"""

from gateway.coap.server import CoapServer, CoapSettings, CoapStats

__all__ = ["CoapServer", "CoapSettings", "CoapStats"]
