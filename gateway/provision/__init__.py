"""`fieldlink provision`: turn Raspberry Pi OS images into fieldlink gateways.

Modules, from the command down to the bytes:

* `cli` (`fieldlink provision`) and `bulk` (`fieldlink provision bulk`) — argument parsing,
  refusals with exit code 2;
* `run.Session` — one run: assets, wheels, ledger and registry, per-gateway outputs;
* `provisioner` — stage a gateway's boot-partition files, check space, write them;
* `firstboot` — cloud-init `user-data`/`network-config`/`meta-data`, or `firstrun.sh`;
* `gatewayconf` — the Pi's gateway.yaml from the commented example config;
* `params` — the parameters of one gateway and their validation;
* `sensors` — preloaded sensor credentials (argon2id file + the operator's CSV);
* `registry` — the provisioning ledger and the cloud's gateway-secret registry;
* `wheels` — the fieldlink wheel and its dependencies for the Pi's platform;
* `media`, `partitions`, `bootfs` — the image: copy/decompress, MBR/GPT, mtools.

On the Pi, `deploy/rpi/install.sh` (run by the first boot) installs what was staged.
"""
