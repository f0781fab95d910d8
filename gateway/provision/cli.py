"""`fieldlink provision`: write a gateway's first-boot configuration into a Raspberry Pi image."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fieldlink provision",
        description="Provision Raspberry Pi OS images for fieldlink gateways.",
    )
    parser.parse_args(list(argv))
    print("fieldlink provision: image provisioning is not available in this release",
          file=sys.stderr)
    return 2
