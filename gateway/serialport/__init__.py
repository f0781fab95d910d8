"""Serial ingress (named `serialport` so it never shadows pyserial's `serial` module).

`gateway.serialport.ingress.SerialIngress` is the component, `gateway.serialport.framing`
the pure byte-stream → line framer.  See docs/coap-serial.md.
"""

from gateway.serialport.framing import Frame, FrameKind, LineFramer
from gateway.serialport.ingress import (
    PARTIAL_LINE_CONTENT_TYPE,
    PortSettings,
    PortStats,
    SerialIngress,
    SerialStats,
)

__all__ = ["PARTIAL_LINE_CONTENT_TYPE", "Frame", "FrameKind", "LineFramer", "PortSettings",
           "PortStats", "SerialIngress", "SerialStats"]
