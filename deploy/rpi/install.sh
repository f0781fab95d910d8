#!/usr/bin/env bash
# Installs (or upgrades, rolls back, removes) the fieldlink gateway on a Raspberry Pi.
#
#   install.sh [--wheels DIR] [--config-from DIR] [--extras LIST] [--force] [--replace-config]
#   install.sh --rollback
#   install.sh --uninstall [--purge]
#   common: [--prefix DIR] [--python PY]
#
# The first boot of a card written by `fieldlink provision` runs it from the boot partition
# (/boot/firmware/fieldlink/install.sh, /boot/fieldlink/ on older releases), with the wheels
# and config staged next to it: by default --wheels is ./wheels and --config-from ./etc
# beside this script.
#
# What it sets up (docs/operations.md):
#   user        system user and group `fieldlink` (member of dialout for serial sensors)
#   venv        /opt/fieldlink/releases/<time>-<hash>/, installed offline from the wheels
#               (pip --no-index --find-links); /opt/fieldlink/venv is a symlink to the
#               current release, /opt/fieldlink/venv.previous to the one before
#   config      /etc/fieldlink/ (root:fieldlink 0750): gateway.yaml and rules.yaml 0640,
#               fieldlink.env 0600 root (systemd reads it), credentials/ (fieldlink 0700)
#               holding mqtt-credentials.json 0600
#   data        /var/lib/fieldlink (the unit's StateDirectory, fieldlink 0750)
#   unit        /etc/systemd/system/fieldlink-gateway.service, enabled
#   journal     /etc/systemd/journald.conf.d/fieldlink.conf (size caps; logs go to journald
#               only, so there is no logrotate file)
#   command     /usr/local/bin/fieldlink -> the current venv's fieldlink
#
# Idempotent.  Running it again with the same wheels changes nothing ("up to date"); with
# new wheels it builds a new release beside the running one and switches the symlink
# atomically, then restarts the service — the old release stays as venv.previous for
# --rollback.  Existing config is never overwritten: a differing staged file is installed
# as <name>.new for review (--replace-config overwrites).  Secrets staged on the boot
# partition (fieldlink.env, credentials) are deleted from it once installed.
#
# --uninstall stops and removes the unit, the venvs, the command link, the journald drop-in
# and the user; config and data stay unless --purge.
#
# --prefix DIR puts every path under DIR (a throwaway root for tests) and, like
# FIELDLINK_INSTALL_DRYRUN_SYSTEM=1, skips what changes the running system (useradd,
# chown, systemctl) — every file is still written.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PREFIX=""
WHEELS=""
CONFIG_FROM=""
EXTRAS="gateway"
PYTHON="${FIELDLINK_PYTHON:-python3}"
ACTION=install
PURGE=0
FORCE=0
REPLACE_CONFIG=0
UNIT_NAME=fieldlink-gateway.service

log() { printf 'install.sh: %s\n' "$*"; }
die() {
    printf 'install.sh: ERROR: %s\n' "$*" >&2
    exit 1
}
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while (($#)); do
    case $1 in
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --wheels) WHEELS=${2:?--wheels needs a directory}; shift 2 ;;
    --config-from) CONFIG_FROM=${2:?--config-from needs a directory}; shift 2 ;;
    --extras) EXTRAS=${2?--extras needs a value (may be empty)}; shift 2 ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
    --force) FORCE=1; shift ;;
    --replace-config) REPLACE_CONFIG=1; shift ;;
    --uninstall) ACTION=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    --rollback) ACTION=rollback; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
if ((PURGE)) && [[ $ACTION != uninstall ]]; then die "--purge goes with --uninstall"; fi

DRY_SYSTEM=0
if [[ -n $PREFIX || ${FIELDLINK_INSTALL_DRYRUN_SYSTEM:-0} == 1 ]]; then DRY_SYSTEM=1; fi
if [[ -n $PREFIX ]]; then
    mkdir -p "$PREFIX"
    PREFIX=$(cd "$PREFIX" && pwd)
fi
if ((!DRY_SYSTEM)) && ((EUID != 0)); then die "run as root (or use --prefix DIR for a test root)"; fi

OPT=$PREFIX/opt/fieldlink
RELEASES=$OPT/releases
VENV_LINK=$OPT/venv
PREV_LINK=$OPT/venv.previous
ETC=$PREFIX/etc/fieldlink
CRED_DIR=$ETC/credentials
DATA=$PREFIX/var/lib/fieldlink
UNIT=$PREFIX/etc/systemd/system/$UNIT_NAME
JOURNALD=$PREFIX/etc/systemd/journald.conf.d/fieldlink.conf
BIN_LINK=$PREFIX/usr/local/bin/fieldlink

# Runs a command that changes the running system; only logged in a dry run.
system() {
    if ((DRY_SYSTEM)); then
        log "skipped (test root): $*"
    else
        "$@"
    fi
}

systemd_running() {
    ((!DRY_SYSTEM)) || return 1
    local state
    state=$(systemctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded || $state == starting ]]
}

# Atomically points symlink $1 at $2 (rename(2) over the old link).
swap_link() {
    local link=$1 target=$2
    ln -sfn "$target" "$link.new.$$"
    mv -Tf "$link.new.$$" "$link"
}

# install_file SRC DEST MODE OWNER[:GROUP]: copy unless identical, then set mode and owner.
install_file() {
    local src=$1 dest=$2 mode=$3 owner=$4
    mkdir -p "$(dirname "$dest")"
    if [[ ! -e $dest ]] || ! cmp -s "$src" "$dest"; then
        cp -f "$src" "$dest.tmp.$$"
        chmod "$mode" "$dest.tmp.$$"
        mv -f "$dest.tmp.$$" "$dest"
        log "wrote $dest"
    fi
    chmod "$mode" "$dest"
    system chown "$owner" "$dest"
}

# install_config NAME SRC DEST MODE OWNER: first install, or keep the existing file and put
# a differing new one beside it as DEST.new (or overwrite with --replace-config).
install_config() {
    local src=$1 dest=$2 mode=$3 owner=$4
    [[ -f $src ]] || return 0
    if [[ -e $dest ]] && ! cmp -s "$src" "$dest" && ((!REPLACE_CONFIG)); then
        install_file "$src" "$dest.new" "$mode" "$owner"
        log "kept the existing $dest; the staged version is $dest.new (--replace-config to use it)"
    else
        install_file "$src" "$dest" "$mode" "$owner"
    fi
}

wheels_stamp() {
    {
        (cd "$WHEELS" && sha256sum -- *.whl | sort -k2)
        echo "extras=$EXTRAS"
        "$PYTHON" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -c1-16
}

# make_venv DIR SPEC: a venv at DIR with SPEC and pip installed offline.  With a pip wheel
# among the wheels, pip runs from that wheel into a venv made --without-pip: no ensurepip
# needed (Debian's python3 without python3-venv) and one pip run instead of two.
make_venv() {
    local dir=$1 spec=$2 pip_whl
    pip_whl=$(find "$WHEELS" -maxdepth 1 -name 'pip-*.whl' | sort -V | tail -n1)
    local -a pip_opts=(install -q --no-index --no-cache-dir --disable-pip-version-check
        --find-links "$WHEELS")
    if [[ -n $pip_whl ]]; then
        "$PYTHON" -m venv --without-pip "$dir" || return 1
        "$PYTHON" "$pip_whl/pip" --python "$dir/bin/python" "${pip_opts[@]}" pip "$spec"
    else
        "$PYTHON" -m venv "$dir" || return 1
        "$dir/bin/python" -m pip "${pip_opts[@]}" "$spec"
    fi
}

install_venv() {
    [[ -d $WHEELS ]] || die "no wheels directory $WHEELS (give --wheels DIR)"
    compgen -G "$WHEELS/fieldlink-*.whl" >/dev/null || die "no fieldlink-*.whl in $WHEELS"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "$PYTHON is missing or older than 3.11"
    local stamp current=""
    stamp=$(wheels_stamp)
    if [[ -L $VENV_LINK ]]; then current=$(readlink -f "$VENV_LINK"); fi
    if ((!FORCE)) && [[ -n $current && -f $current/.fieldlink-stamp ]] &&
        [[ $(cat "$current/.fieldlink-stamp") == "$stamp" ]] &&
        "$current/bin/fieldlink" --version >/dev/null 2>&1; then
        log "venv up to date ($current)"
        VENV_CHANGED=0
        return 0
    fi
    local name
    name="$(date -u +%Y%m%dT%H%M%SZ)-$stamp"
    local rel=$RELEASES/$name
    mkdir -p "$RELEASES"
    rm -rf "$rel"
    local spec=fieldlink
    if [[ -n $EXTRAS ]]; then spec="fieldlink[$EXTRAS]"; fi
    log "building $rel: $spec from $WHEELS"
    if ! make_venv "$rel" "$spec"; then
        rm -rf "$rel"
        die "pip could not install $spec from $WHEELS (the running release is unchanged)"
    fi
    if ! "$rel/bin/fieldlink" gateway --help >/dev/null; then
        rm -rf "$rel"
        die "the new release does not run 'fieldlink gateway --help' (the running release is unchanged)"
    fi
    echo "$stamp" >"$rel/.fieldlink-stamp"
    # the switch: previous <- current, current <- new; each a rename, never a missing link
    if [[ -n $current && -d $current ]]; then swap_link "$PREV_LINK" "releases/$(basename "$current")"; fi
    swap_link "$VENV_LINK" "releases/$name"
    log "venv -> releases/$name"
    VENV_CHANGED=1
    prune_releases
}

# Keeps the current and the previous release; removes older ones.
prune_releases() {
    local keep_cur keep_prev="" dir
    keep_cur=$(readlink -f "$VENV_LINK")
    if [[ -L $PREV_LINK ]]; then keep_prev=$(readlink -f "$PREV_LINK"); fi
    for dir in "$RELEASES"/*; do
        [[ -d $dir ]] || continue
        dir=$(readlink -f "$dir")
        if [[ $dir != "$keep_cur" && $dir != "$keep_prev" ]]; then
            rm -rf "$dir"
            log "removed old release $dir"
        fi
    done
}

do_install() {
    [[ -n $WHEELS ]] || WHEELS=$HERE/wheels
    if [[ -z $CONFIG_FROM && -d $HERE/etc ]]; then CONFIG_FROM=$HERE/etc; fi
    log "installing into ${PREFIX:-/} (wheels: $WHEELS, config: ${CONFIG_FROM:-none})"

    if ! getent passwd fieldlink >/dev/null 2>&1 || ((DRY_SYSTEM)); then
        system useradd --system --user-group --home-dir /var/lib/fieldlink --no-create-home \
            --shell /usr/sbin/nologin --comment "fieldlink gateway" fieldlink
    fi
    system usermod -aG dialout fieldlink

    mkdir -p "$ETC" "$CRED_DIR" "$DATA"
    chmod 0750 "$ETC" "$DATA"
    chmod 0700 "$CRED_DIR"
    system chown root:fieldlink "$ETC"
    system chown fieldlink:fieldlink "$CRED_DIR" "$DATA"

    if [[ -n $CONFIG_FROM ]]; then
        [[ -d $CONFIG_FROM ]] || die "--config-from $CONFIG_FROM is not a directory"
        install_config "$CONFIG_FROM/gateway.yaml" "$ETC/gateway.yaml" 0640 root:fieldlink
        install_config "$CONFIG_FROM/rules.yaml" "$ETC/rules.yaml" 0640 root:fieldlink
        install_config "$CONFIG_FROM/fieldlink.env" "$ETC/fieldlink.env" 0600 root:root
        install_config "$CONFIG_FROM/credentials/mqtt-credentials.json" \
            "$CRED_DIR/mqtt-credentials.json" 0600 fieldlink:fieldlink
    fi
    [[ -f $ETC/gateway.yaml ]] || log "WARNING: no $ETC/gateway.yaml yet (give --config-from DIR)"

    VENV_CHANGED=0
    install_venv
    mkdir -p "$(dirname "$BIN_LINK")"
    swap_link "$BIN_LINK" "$OPT/venv/bin/fieldlink"

    install_file "$HERE/$UNIT_NAME" "$UNIT" 0644 root:root
    local journald_before=""
    if [[ -f $JOURNALD ]]; then journald_before=$(sha256sum <"$JOURNALD"); fi
    install_file "$HERE/journald-fieldlink.conf" "$JOURNALD" 0644 root:root

    # the secrets are on the root filesystem now; the FAT boot partition has no permissions
    if [[ -n $CONFIG_FROM ]]; then
        rm -f "$CONFIG_FROM/fieldlink.env" "$CONFIG_FROM/credentials/mqtt-credentials.json"
    fi

    if systemd_running; then
        systemctl daemon-reload
        if [[ $journald_before != "$(sha256sum <"$JOURNALD")" ]]; then
            systemctl restart systemd-journald || true
        fi
        systemctl enable "$UNIT_NAME"
        if ((VENV_CHANGED)) || ! systemctl is-active --quiet "$UNIT_NAME"; then
            # during boot (cloud-init's runcmd) queue the start instead of waiting for READY=1
            local block=()
            if [[ $(systemctl is-system-running 2>/dev/null || true) == starting ]]; then
                block=(--no-block)
            fi
            systemctl restart "${block[@]}" "$UNIT_NAME"
        fi
        log "$UNIT_NAME enabled and running ($(systemctl is-active "$UNIT_NAME" || true))"
    elif ((DRY_SYSTEM)); then
        log "skipped (test root): systemctl enable --now $UNIT_NAME"
    else
        # first boot via firstrun.sh: systemd is not up yet; the unit starts after the reboot
        systemctl enable "$UNIT_NAME"
        log "$UNIT_NAME enabled; it starts on the next boot"
    fi
    log "done"
}

do_rollback() {
    [[ -L $PREV_LINK ]] || die "no previous release to roll back to ($PREV_LINK)"
    local cur prev
    cur=$(readlink "$VENV_LINK")
    prev=$(readlink "$PREV_LINK")
    swap_link "$VENV_LINK" "$prev"
    swap_link "$PREV_LINK" "$cur"
    log "venv -> $prev (previous: $cur)"
    if systemd_running; then systemctl restart "$UNIT_NAME"; else system systemctl restart "$UNIT_NAME"; fi
}

do_uninstall() {
    log "uninstalling from ${PREFIX:-/}"
    if systemd_running; then
        systemctl disable --now "$UNIT_NAME" || true
    else
        system systemctl disable --now "$UNIT_NAME"
    fi
    rm -f "$UNIT" "$JOURNALD" "$BIN_LINK"
    if systemd_running; then systemctl daemon-reload; fi
    rm -rf "$OPT"
    if ((PURGE)); then
        rm -rf "$ETC" "$DATA"
        log "purged $ETC and $DATA"
    else
        log "kept config $ETC and data $DATA (--purge removes them)"
    fi
    if getent passwd fieldlink >/dev/null 2>&1 || ((DRY_SYSTEM)); then
        system userdel fieldlink
    fi
    log "done"
}

case $ACTION in
install) do_install ;;
rollback) do_rollback ;;
uninstall) do_uninstall ;;
esac
