#!/usr/bin/env bash
# One script for every machine the appliance meets.
#
#   ./setup.sh demo [ARGS…]   set up (system packages, .venv) and run `appliance demo ARGS…`
#   ./setup.sh test [ARGS…]   set up with the test extras, lint, run the whole test suite
#   ./setup.sh dev            set up only (the .venv with test extras), print how to use it
#   sudo ./setup.sh install [--root DIR]      install on a Raspberry Pi (docs/install.md)
#   sudo ./setup.sh uninstall [--purge-data]  remove it; recordings stay unless --purge-data
#
# Idempotent: the second run only checks that nothing changed (a stamp keyed by the
# hash of pyproject.toml and this script) and is quick.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

VENV="${APPLIANCE_VENV:-$here/.venv}"
PYTHON="${PYTHON:-python3}"
# System libraries the Python packages cannot bring themselves: PortAudio for sounddevice,
# espeak-ng for the speech fallback and the simulated callers, ALSA tools for diagnostics,
# libspeexdsp1 for the echo cancellers (bound through ctypes: nothing to compile).
APT_PACKAGES=(libportaudio2 libspeexdsp1 espeak-ng alsa-utils python3-venv)
# For the test suite only: vgetty (mgetty-voice), a real third-party V.253 client the modem
# emulator must satisfy; util-linux's unshare to run it in a private mount namespace (and
# runuser for the permission tests as root); curl for the voice-download tests; systemd for
# `systemd-analyze verify` of the unit; Debian's Chromium for the owner's page's browser tests
# (Playwright drives it and never downloads a browser of its own); openssl to make the test
# CA of the archive's HTTPS test. Without them those tests would only be skipped.
APT_TEST_PACKAGES=(mgetty-voice util-linux curl systemd chromium openssl)

# Bold/red only when stderr is a terminal (and NO_COLOR is unset): logs and CI stay plain text.
if [ -t 2 ] && [ -z "${NO_COLOR:-}" ]; then
    BOLD=$'\033[1m' RED=$'\033[1;31m' PLAIN=$'\033[0m'
else
    BOLD="" RED="" PLAIN=""
fi
say() { printf '%ssetup:%s %s\n' "$BOLD" "$PLAIN" "$*" >&2; }
die() { printf '%ssetup: %s%s\n' "$RED" "$*" "$PLAIN" >&2; exit 1; }

missing_apt_packages() {
    local pkg missing=()
    command -v dpkg-query >/dev/null 2>&1 || return 0   # not Debian: nothing we can check
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    echo "${missing[@]:-}"
}

ensure_system_packages() {
    local missing
    missing="$(missing_apt_packages)"
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" -eq 0 ]; then
        say "installing system packages: $missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        die "missing system packages: $missing
       run:  sudo apt-get update && sudo apt-get install -y $missing
       then run this command again."
    fi
}

ensure_venv() {
    local extras="$1" stamp want
    stamp="$VENV/.setup-stamp"
    want="$(cat pyproject.toml setup.sh | sha256sum | cut -d' ' -f1)-$extras"
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    say "installing the appliance into $VENV (extras: ${extras:-none}) — first time takes a minute"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    if [ -n "$extras" ]; then
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]"
    else
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e .
    fi
    echo "$want" >"$stamp"
}

# --- the permission tests as an unprivileged user --------------------------------------------
#
# Tests marked `unprivileged` stage a denied read (a file at mode 000); root reads any file,
# so as root pytest skips them and this runs them again as TEST_USER. That user may not enter
# the checkout (a clone in /root) nor run the venv's interpreter (pyenv in /root), so it gets
# a copy of the checkout and a venv of its own in a temporary directory: a python it can run
# with the same X.Y, and the venv's site-packages hard-linked in (copied across filesystems).

TEST_USER="${APPLIANCE_TEST_USER:-nobody}"

# An interpreter TEST_USER can run, of the same X.Y as the venv's; printed, or nothing.
python_for_test_user() {
    local want cand got
    want="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    for cand in "$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)')" \
                "/usr/bin/python$want" /usr/bin/python3 "/usr/local/bin/python$want"; do
        [ -x "$cand" ] || continue
        got="$(runuser -u "$TEST_USER" -- "$cand" -c \
            'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || continue
        if [ "$got" = "$want" ]; then
            printf '%s\n' "$cand"
            return 0
        fi
    done
}

site_packages() {   # VENV — its site-packages directory
    "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))'
}

run_unprivileged_tests() {   # [PYTEST ARGS…] — as root only; returns pytest's status
    local tmp py site rc=0
    # shellcheck disable=SC2064  # $tmp is expanded now, on purpose
    command -v runuser >/dev/null 2>&1 \
        || die "runuser (util-linux) is needed to run the permission tests as $TEST_USER"
    id -u "$TEST_USER" >/dev/null 2>&1 \
        || die "no user '$TEST_USER' to run the permission tests as (set APPLIANCE_TEST_USER)"
    py="$(python_for_test_user)"
    [ -n "$py" ] || die "no python $("$VENV/bin/python" -V 2>&1) that user '$TEST_USER' can run
       (the venv's is $("$VENV/bin/python" -c 'import sys; print(sys._base_executable)'));
       install python3-venv, or set APPLIANCE_TEST_USER to a user that can run it."
    tmp="$(mktemp -d)"
    trap "rm -rf '$tmp'" EXIT
    chmod 0755 "$tmp"
    mkdir "$tmp/src" "$tmp/home"
    # The checkout as git sees it (tracked + new, not ignored), else everything but the venv.
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -z --cached --others --exclude-standard \
            | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
            | tar -c --null -T - | tar -x -C "$tmp/src"
    else
        tar -c --exclude=./.venv --exclude=./.git --exclude=__pycache__ . | tar -x -C "$tmp/src"
    fi
    "$py" -m venv --without-pip "$tmp/venv"
    site="$(site_packages "$tmp/venv")"
    cp -al "$(site_packages "$VENV")/." "$site/" 2>/dev/null \
        || cp -a "$(site_packages "$VENV")/." "$site/"
    # The editable install points at this checkout; the copy takes its place.
    rm -f "$site"/__editable__*appliance* "$site"/appliance*.egg-link
    printf '%s\n' "$tmp/src" >"$site/appliance-checkout.pth"
    # The venv's programs (weed, litestream, ruff …; tests find them beside the python), and
    # its script entry points re-pointed at the new python.
    local prog name
    for prog in "$VENV"/bin/*; do
        name="$(basename "$prog")"
        [ -f "$prog" ] || continue                  # __pycache__ and other folders
        [ -e "$tmp/venv/bin/$name" ] && continue   # python, activate: the new venv's own
        if [ "$(head -c 2 "$prog")" = "#!" ]; then
            sed "1s|^#!.*|#!$tmp/venv/bin/python|" "$prog" >"$tmp/venv/bin/$name"
            chmod 0755 "$tmp/venv/bin/$name"
        else
            cp -al "$prog" "$tmp/venv/bin/" 2>/dev/null || cp -a "$prog" "$tmp/venv/bin/"
        fi
    done
    chown -R "$TEST_USER" "$tmp/src" "$tmp/home"
    say "pytest -m unprivileged as user $TEST_USER (permission tests root would pass)"
    (cd "$tmp/src" && runuser -u "$TEST_USER" -- env HOME="$tmp/home" PATH="$tmp/venv/bin:$PATH" \
        "$tmp/venv/bin/python" -m pytest -p no:cacheprovider -n 0 -m unprivileged "$@") || rc=$?
    rm -rf "$tmp"
    trap - EXIT
    [ "$rc" -eq 5 ] && rc=0   # none of the selected tests is a permission test
    return "$rc"
}

# --- install / uninstall on a Raspberry Pi (issue 7, docs/install.md) ------------------------
#
# Every system-changing step goes through `sys`, which appends the command to a plan and runs
# it unless staging. With --root DIR the same files land under DIR (modes set; owners, apt,
# users, pip, network and systemctl only recorded in DIR/.install-plan) — what the tests use.
# Files are replaced only when their content or mode differs, so a second run changes nothing.

OPT_DIR=/opt/appliance
APPLIANCE_BIN="$OPT_DIR/venv/bin/appliance"
ETC_DIR=/etc/appliance
CONFIG_FILE="$ETC_DIR/config.toml"
STATE_DIR=/var/lib/appliance
VOICE_DIR=/usr/share/appliance/voices
UNIT_DIR=/etc/systemd/system
UDEV_DIR=/etc/udev/rules.d
ASOUND_CONF=/etc/asound.conf
ASOUND_MARKER="# appliance-asound"
CTL_WRAPPER=/usr/local/bin/appliancectl
WEBCTL_WRAPPER=/usr/local/bin/appliance-webctl
SERVICE_USER=appliance
# The owner's page runs as its own user in the appliance group (docs/web.md).
WEB_USER=appliance-web
# What the Pi needs besides the venv: PortAudio for sounddevice, espeak-ng as the speech
# fallback, alsa-utils (aplay/alsamixer/alsactl) for the technician, curl for the voice;
# openssl makes the owner's page's certificate, avahi-daemon announces <hostname>.local;
# libspeexdsp1 for the echo cancellers.
INSTALL_APT_PACKAGES=(python3 python3-venv python3-pip libportaudio2 libspeexdsp1 espeak-ng
                      alsa-utils curl ca-certificates openssl avahi-daemon)

ROOT=""            # --root DIR, without trailing slash; "" = the real system
STAGED=0
PLAN_FILE=""       # the plan being written (a temp file, moved into DIR/.install-plan)
CHANGED=0          # something the running service would notice was replaced
PARTIAL=""         # a download in progress, removed if we die or are interrupted

# The path of an absolute system path inside the target root.
p() { printf '%s%s' "$ROOT" "$1"; }

# Record a shell command in the plan and run it on the real system (never when staging).
sys() {
    printf '%s\n' "$*" >>"$PLAN_FILE"
    [ "$STAGED" -eq 1 ] && return 0
    bash -c "$*"
}

parse_root_args() {   # sets ROOT/STAGED and PURGE_DATA from "$@"
    PURGE_DATA=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT="$2"; shift 2 ;;
            --root=*) ROOT="${1#--root=}"; shift ;;
            --purge-data) PURGE_DATA=1; shift ;;
            *) die "unknown option '$1' (install [--root DIR]; uninstall [--purge-data] [--root DIR])" ;;
        esac
    done
    if [ -n "$ROOT" ]; then
        mkdir -p "$ROOT"
        ROOT="$(cd "$ROOT" && pwd)"
        [ "$ROOT" != "/" ] || die "--root / would stage over the live system; run without --root"
        STAGED=1
    elif [ "$(id -u)" -ne 0 ]; then
        die "installing changes the system: run  sudo ./setup.sh ${cmd}  (or stage with --root DIR)"
    fi
    PLAN_FILE="$(mktemp)"
    trap 'rm -f "$PLAN_FILE" ${PARTIAL:+"$PARTIAL"}' EXIT
    trap 'exit 130' INT TERM
}

finish_plan() {   # keep the plan only when staging; unchanged content keeps the old file
    if [ "$STAGED" -eq 1 ] && ! cmp -s "$PLAN_FILE" "$ROOT/.install-plan"; then
        install -m 0644 "$PLAN_FILE" "$ROOT/.install-plan"
    fi
}

set_owner() {   # OWNER PATH — recorded when staging (the user does not exist in DIR)
    sys "chown $1 $2"
}

put_dir() {   # PATH MODE OWNER
    local target
    target="$(p "$1")"
    [ -d "$target" ] || mkdir -p "$target"
    [ "$(stat -c %a "$target")" = "${2#0}" ] || chmod "$2" "$target"
    set_owner "$3" "$1"
}

put_file() {   # SRC DEST MODE OWNER — replace only when content or mode differ
    local src="$1" dest="$2" mode="$3" owner="$4" target
    target="$(p "$dest")"
    if [ -f "$target" ] && cmp -s "$src" "$target" && [ "$(stat -c %a "$target")" = "${mode#0}" ]
    then
        :
    else
        mkdir -p "$(dirname "$target")"
        install -m "$mode" "$src" "$target"
        say "installed $dest"
        CHANGED=1
    fi
    set_owner "$owner" "$dest"
}

install_system_packages() {
    # Bookworm ships Python 3.11 (tomllib, the package's floor); apt runs only when needed.
    sys "dpkg-query -W ${INSTALL_APT_PACKAGES[*]} >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${INSTALL_APT_PACKAGES[*]}; }"
}

install_user() {
    # gpio exists on Raspberry Pi OS; elsewhere create it (hw/99-appliance-gpio.rules uses it).
    sys "getent group gpio >/dev/null || groupadd --system gpio"
    sys "getent passwd $SERVICE_USER >/dev/null || useradd --system --user-group --home-dir $STATE_DIR --no-create-home --shell /usr/sbin/nologin --comment 'Call-recording appliance' $SERVICE_USER"
    sys "usermod --append --groups dialout,audio,gpio $SERVICE_USER"
    # The owner's page: its own user whose primary group is appliance (the index, the
    # recordings, the control socket are group rw, and what it creates stays the group's);
    # systemd-journal for the logs page.
    sys "getent passwd $WEB_USER >/dev/null || useradd --system --gid $SERVICE_USER --home-dir $STATE_DIR/web --no-create-home --shell /usr/sbin/nologin --comment 'Call-recording appliance: owner page' $WEB_USER"
    sys "usermod --gid $SERVICE_USER --append --groups systemd-journal $WEB_USER"
}

install_web() {
    # The page's directory (accounts, TLS certificate and key) belongs to its user.
    put_dir "$STATE_DIR/web" 0750 "$WEB_USER:$SERVICE_USER"
    # Boxes installed before the page had the index and recording folders without group
    # write; the page appends to the audit chain and erases (docs/web.md).
    sys "chmod g+w $STATE_DIR/appliance.db $STATE_DIR/appliance.db-wal $STATE_DIR/appliance.db-shm 2>/dev/null || true"
    sys "[ ! -d $STATE_DIR/recordings ] || find $STATE_DIR/recordings -type d -exec chmod 0770 {} +"
    # The certificate for https://<hostname>.local/ (made once; its fingerprint is printed).
    if [ "$STAGED" -eq 1 ]; then
        printf '%s\n' "runuser -u $WEB_USER -- $APPLIANCE_BIN --config $CONFIG_FILE web cert" \
            >>"$PLAN_FILE"
    else
        sys "runuser -u $WEB_USER -- $APPLIANCE_BIN --config $CONFIG_FILE web cert"
    fi
    # avahi-daemon announces <hostname>.local on the LAN (mDNS): the owner types a name.
    sys "systemctl enable --now avahi-daemon.service 2>/dev/null || true"
    local tmp
    tmp="$(mktemp)"
    cat >"$tmp" <<WRAPPER
#!/bin/sh
# appliance-webctl: the page's accounts (\`user add|passwd|remove|list\`) as its user (setup.sh).
[ "\$(id -u)" -eq 0 ] || { echo "appliance-webctl: run with sudo" >&2; exit 1; }
exec runuser -u $WEB_USER -- $APPLIANCE_BIN --config $CONFIG_FILE "\$@"
WRAPPER
    put_file "$tmp" "$WEBCTL_WRAPPER" 0755 root:root
    rm -f "$tmp"
}

source_hash() {   # what the venv was built from: the package, its metadata
    find appliance pyproject.toml README.md -type f ! -path '*/__pycache__/*' -print0 \
        | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

install_venv() {
    local stamp want build
    put_dir "$OPT_DIR" 0755 root:root
    stamp="$(p "$OPT_DIR/venv/.install-stamp")"
    want="$(source_hash)"
    if [ "$STAGED" -eq 0 ] && [ -x "$OPT_DIR/venv/bin/python" ] && [ -f "$stamp" ] \
        && [ "$(cat "$stamp")" = "$want" ]; then
        printf '%s\n' "# venv up to date ($want)" >>"$PLAN_FILE"
        return 0
    fi
    # Build from a clean copy: pip builds in-tree and would leave root-owned build/ and
    # *.egg-info in the technician's checkout.
    if [ "$STAGED" -eq 1 ]; then
        build="<clean copy of the source>"   # keeps the plan identical from run to run
    else
        build="$(mktemp -d)"
        tar -c --exclude=__pycache__ appliance pyproject.toml README.md | tar -x -C "$build"
    fi
    sys "[ -x $OPT_DIR/venv/bin/python ] || python3 -m venv $OPT_DIR/venv"
    sys "$OPT_DIR/venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip"
    # .[pi] adds lgpio (gpiozero's pin factory on Bookworm, required on a Pi 5); .[archive]
    # the chain's archive (docs/archive.md), off until [archive] is configured.
    sys "$OPT_DIR/venv/bin/python -m pip install -q --disable-pip-version-check --upgrade '${build}[pi,archive]'"
    if [ "$STAGED" -eq 0 ]; then
        rm -rf "$build"
        echo "$want" >"$stamp"
        CHANGED=1
    fi
}

install_config() {
    put_dir "$ETC_DIR" 0750 "root:$SERVICE_USER"
    # The template beside the config, so an upgrade's new keys can be diffed in.
    put_file hw/config.toml "$CONFIG_FILE.example" 0644 root:root
    if [ -e "$(p "$CONFIG_FILE")" ]; then
        say "keeping $CONFIG_FILE (compare with $CONFIG_FILE.example after upgrades)"
        # Content is never touched; owner/mode are: the daemon must be able to read it.
        [ "$(stat -c %a "$(p "$CONFIG_FILE")")" = 640 ] || chmod 0640 "$(p "$CONFIG_FILE")"
        set_owner "root:$SERVICE_USER" "$CONFIG_FILE"
    else
        put_file hw/config.toml "$CONFIG_FILE" 0640 "root:$SERVICE_USER"
    fi
}

install_hw_files() {
    put_file hw/99-appliance-modem.rules "$UDEV_DIR/99-appliance-modem.rules" 0644 root:root
    put_file hw/99-appliance-gpio.rules "$UDEV_DIR/99-appliance-gpio.rules" 0644 root:root
    sys "udevadm control --reload && udevadm trigger --action=add --subsystem-match=tty --subsystem-match=gpio"
    local asound
    asound="$(p "$ASOUND_CONF")"
    if [ ! -e "$asound" ] || head -n1 "$asound" | grep -q "^$ASOUND_MARKER"; then
        put_file hw/asound.conf "$ASOUND_CONF" 0644 root:root
    else
        say "WARNING: $ASOUND_CONF exists and is not ours: left alone. Add the appliance_handset"
        say "         PCM from hw/asound.conf to it by hand, or handset audio will not open."
    fi
}

install_docs() {
    local f
    put_dir "$OPT_DIR/doc" 0755 root:root
    put_file docs/install.md "$OPT_DIR/doc/install.md" 0644 root:root
    put_file docs/archive.md "$OPT_DIR/doc/archive.md" 0644 root:root
    for f in hw/*.md; do
        put_file "$f" "$OPT_DIR/doc/hw/$(basename "$f")" 0644 root:root
    done
}

install_ctl_wrapper() {
    # Mopidy's mopidyctl idea: technician commands run as the service
    # user with the service's config, so they see what the daemon sees.
    local tmp
    tmp="$(mktemp)"
    cat >"$tmp" <<WRAPPER
#!/bin/sh
# appliancectl: run \`appliance\` as the service user with the service config (setup.sh).
[ "\$(id -u)" -eq 0 ] || { echo "appliancectl: run with sudo" >&2; exit 1; }
exec runuser -u $SERVICE_USER -- $APPLIANCE_BIN --config $CONFIG_FILE "\$@"
WRAPPER
    put_file "$tmp" "$CTL_WRAPPER" 0755 root:root
    rm -f "$tmp"
}

# Print "name url_base path onnx_sha256 config_sha256" for the voice the config asks for, or
# nothing when it is not a pinned Piper voice (espeak, a path to an own .onnx). The pins are
# every language folder's voices.toml (docs/languages.md), or $APPLIANCE_VOICES_TOML alone.
voice_spec() {
    local pins=(appliance/languages/*/voices.toml)
    if [ -n "${APPLIANCE_VOICES_TOML:-}" ]; then
        pins=("$APPLIANCE_VOICES_TOML")
    fi
    python3 - "$(p "$CONFIG_FILE")" "${APPLIANCE_VOICE_MIRROR:-}" "${pins[@]}" <<'PY'
import sys, tomllib
config_path, mirror, *pin_paths = sys.argv[1:]
voices = {}
for pins_path in pin_paths:
    with open(pins_path, "rb") as f:
        pins = tomllib.load(f)
    for voice_name, voice in pins["voices"].items():
        voices[voice_name] = {**voice, "base_url": pins["base_url"]}
with open("appliance/defaults.toml", "rb") as f:
    name = tomllib.load(f)["speech"]["voice"]
try:
    with open(config_path, "rb") as f:
        name = tomllib.load(f).get("speech", {}).get("voice", name)
except FileNotFoundError:
    pass
voice = voices.get(name)
if voice is None:
    print(f"# voice {name!r} is not in the pinned list: nothing to download", file=sys.stderr)
    sys.exit(0)
print(name, mirror or voice["base_url"], voice["path"], voice["onnx_sha256"],
      voice.get("config_sha256") or "-")
PY
}

fetch_checked() {   # URL DEST SHA256|- — download to DEST.part, verify, then rename
    local url="$1" dest="$2" want="$3" target got
    target="$(p "$dest")"
    if [ -f "$target" ]; then
        got="$(sha256sum "$target" | cut -d' ' -f1)"
        if [ "$want" = "-" ] || [ "$got" = "$want" ]; then
            return 0
        fi
        say "$dest has the wrong SHA-256 ($got): downloading it again"
    fi
    if [ "$STAGED" -eq 1 ] && [[ "$url" != file://* ]]; then
        printf '%s\n' "curl -fL -o $dest.part $url; check SHA-256 ${want/#-/(not pinned: JSON check)}; mv $dest.part $dest" \
            >>"$PLAN_FILE"
        return 0
    fi
    mkdir -p "$(dirname "$target")"
    PARTIAL="$target.part"
    rm -f "$PARTIAL"
    say "downloading $url"
    if ! curl -fL --retry 3 --connect-timeout 20 -sS -o "$PARTIAL" "$url"; then
        rm -f "$PARTIAL"
        die "download failed: $url
       check the network (curl -I https://huggingface.co) and run the install again."
    fi
    got="$(sha256sum "$PARTIAL" | cut -d' ' -f1)"
    if [ "$want" != "-" ] && [ "$got" != "$want" ]; then
        rm -f "$PARTIAL"
        die "SHA-256 mismatch for $url
       expected $want (appliance/languages/*/voices.toml)
       got      $got
       the download was removed; nothing was installed. A truncated download or a changed
       file upstream: run the install again; if it repeats, do not edit the pin — report it."
    fi
    chmod 0644 "$PARTIAL"
    mv -f "$PARTIAL" "$target"
    PARTIAL=""
    CHANGED=1
}

install_voice() {
    local spec name base path onnx_sha config_sha
    put_dir "$(dirname "$VOICE_DIR")" 0755 root:root
    put_dir "$VOICE_DIR" 0755 root:root
    spec="$(voice_spec)"
    [ -n "$spec" ] || return 0
    read -r name base path onnx_sha config_sha <<<"$spec"
    fetch_checked "$base$path.onnx" "$VOICE_DIR/$name.onnx" "$onnx_sha"
    fetch_checked "$base$path.onnx.json" "$VOICE_DIR/$name.onnx.json" "$config_sha"
    local json
    json="$(p "$VOICE_DIR/$name.onnx.json")"
    if [ -f "$json" ] && ! python3 -c 'import json, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
sys.exit(0 if d["audio"]["sample_rate"] == 22050 else 1)' "$json" 2>/dev/null; then
        rm -f "$json"
        die "$VOICE_DIR/$name.onnx.json is not a 22 050 Hz Piper voice config: removed"
    fi
}

install_units() {
    local unit units=()
    for unit in systemd/*.service systemd/*.timer; do
        [ -e "$unit" ] || continue
        put_file "$unit" "$UNIT_DIR/$(basename "$unit")" 0644 root:root
        units+=("$(basename "$unit")")
    done
    sys "systemctl daemon-reload"
    # The service, and any timer (the purge timer); oneshot services are started by them.
    for unit in "${units[@]}"; do
        case "$unit" in
            appliance.service|appliance-web.service|*.timer) sys "systemctl enable $unit" ;;
        esac
    done
}

start_service() {
    local unit
    if [ "$STAGED" -eq 1 ]; then
        printf '%s\n' "systemctl restart appliance.service appliance-web.service  # when a file above changed, else start" \
            >>"$PLAN_FILE"
        for unit in systemd/*.timer; do
            if [ -e "$unit" ]; then
                printf '%s\n' "systemctl start $(basename "$unit")" >>"$PLAN_FILE"
            fi
        done
        return 0
    fi
    if [ "$CHANGED" -eq 1 ]; then
        sys "systemctl restart appliance.service appliance-web.service"
    else
        sys "systemctl start appliance.service appliance-web.service"
    fi
    for unit in systemd/*.timer; do
        if [ -e "$unit" ]; then
            sys "systemctl start $(basename "$unit")"
        fi
    done
}

run_as_service() {   # an `appliance` subcommand as the service user, if the command exists
    local sub="$1"
    shift
    if [ "$STAGED" -eq 1 ]; then
        printf '%s\n' "runuser -u $SERVICE_USER -- $APPLIANCE_BIN --config $CONFIG_FILE $sub${*:+ $*}  # if available" \
            >>"$PLAN_FILE"
        return 0
    fi
    if ! "$APPLIANCE_BIN" "$sub" --help >/dev/null 2>&1; then
        say "(this version has no \`appliance $sub\`: skipped)"
        return 0
    fi
    say "appliance $sub${*:+ $*}"
    sys "runuser -u $SERVICE_USER -- $APPLIANCE_BIN --config $CONFIG_FILE $sub${*:+ $*}" \
        || say "WARNING: \`appliance $sub${*:+ $*}\` failed (see above)"
}

do_install() {
    parse_root_args "$@"
    umask 022
    [ "$STAGED" -eq 1 ] && say "staging into $ROOT (nothing outside it is changed)"
    install_system_packages
    install_user
    install_venv
    install_config
    put_dir "$STATE_DIR" 0770 "$SERVICE_USER:$SERVICE_USER"
    install_hw_files
    install_voice
    install_docs
    install_ctl_wrapper
    install_web
    run_as_service sounds build
    install_units
    start_service
    run_as_service doctor
    finish_plan
    if [ "$STAGED" -eq 1 ]; then
        say "staged into $ROOT; system steps are listed in $ROOT/.install-plan"
    else
        say "installed. Check: systemctl status appliance; journalctl -u appliance -f"
    fi
}

do_uninstall() {
    local unit
    parse_root_args "$@"
    for unit in systemd/*.timer systemd/*.service; do
        [ -e "$unit" ] || continue
        sys "systemctl disable --now $(basename "$unit") 2>/dev/null || true"
        rm -f "$(p "$UNIT_DIR/$(basename "$unit")")"
    done
    sys "systemctl daemon-reload"
    rm -f "$(p "$UDEV_DIR/99-appliance-modem.rules")" "$(p "$UDEV_DIR/99-appliance-gpio.rules")"
    sys "udevadm control --reload"
    if [ -f "$(p "$ASOUND_CONF")" ] && head -n1 "$(p "$ASOUND_CONF")" | grep -q "^$ASOUND_MARKER"
    then
        rm -f "$(p "$ASOUND_CONF")"
    fi
    rm -rf "$(p "$OPT_DIR")" "$(p "$VOICE_DIR")" "$(p "$CTL_WRAPPER")" "$(p "$WEBCTL_WRAPPER")"
    rmdir "$(p /usr/share/appliance)" 2>/dev/null || true
    if [ "$PURGE_DATA" -eq 1 ]; then
        say "removing recordings, index and config ($STATE_DIR, $ETC_DIR) and the user"
        rm -rf "$(p "$STATE_DIR")" "$(p "$ETC_DIR")"
        sys "getent passwd $WEB_USER >/dev/null && userdel $WEB_USER || true"
        sys "getent passwd $SERVICE_USER >/dev/null && userdel $SERVICE_USER || true"
    else
        say "kept $STATE_DIR (recordings, index), $ETC_DIR and the user $SERVICE_USER"
        say "(./setup.sh uninstall --purge-data removes them — recordings may be under a legal hold)"
    fi
    finish_plan
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        ensure_system_packages
        ensure_venv ""
        exec "$VENV/bin/appliance" demo "$@"
        ;;
    test)
        APT_PACKAGES+=("${APT_TEST_PACKAGES[@]}")
        ensure_system_packages
        ensure_venv "test"
        say "ruff check"
        "$VENV/bin/ruff" check appliance tests
        say "mypy (strict on line/, call/, store/, audio/; pyproject.toml)"
        "$VENV/bin/mypy"
        # The system tests spend most of their time waiting on real-time audio, so a few
        # workers (pytest-xdist) cut the wall time even on two cores. Work stealing: a worker
        # that runs out takes tests queued on another, so the 20-40 s daemon tests, which sit
        # together in collection order, do not all wait on one worker.
        say "pytest (${APPLIANCE_TEST_WORKERS:-4} workers)"
        status=0
        # -rs lists every skip and its reason: a skipped test must say why it cannot run.
        "$VENV/bin/python" -m pytest -rs -n "${APPLIANCE_TEST_WORKERS:-4}" --dist worksteal "$@" \
            || status=$?
        if [ "$(id -u)" -eq 0 ]; then
            run_unprivileged_tests "$@" || status=$?
        fi
        exit "$status"
        ;;
    dev)
        ensure_system_packages
        ensure_venv "test"
        say "ready: . $VENV/bin/activate  (then: appliance --help, pytest)"
        ;;
    install)
        do_install "$@"
        ;;
    uninstall)
        do_uninstall "$@"
        ;;
    ""|-h|--help|help)
        sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *)
        die "unknown command '$cmd' (try: ./setup.sh --help)"
        ;;
esac
