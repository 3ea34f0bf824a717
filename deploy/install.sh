#!/usr/bin/env bash
# Install, upgrade or remove the aggregator as a systemd service. Run it as root from a checkout.
# It is idempotent: run it again after `git pull` to upgrade. It never overwrites a config you
# edited and never touches your data unless you pass --purge.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/install.sh [OPTIONS]

Installs the aggregator into a virtualenv at /opt/aggregator/venv, the default config into
/etc/aggregator (keeping your edits), and the unit to /etc/systemd/system/aggregator.service.

Options:
  --uninstall        stop the service, remove the unit and /opt/aggregator; keep config and data
  --purge            with --uninstall: also delete /etc/aggregator (token included) and the database
  --python PATH      the Python (3.11+) that creates the virtualenv (default: python3)
  --source DIR       the checkout to install from (default: the one holding this script)
  --wheels DIR       install offline from a directory of wheels, with no package index.
                     Make it on a machine with network access, from the same checkout:
                       python3 -m pip wheel --wheel-dir DIR . 'setuptools>=68'
  --pip-args ARGS    extra arguments for pip, e.g. "--index-url https://pypi.example/simple"
  --skip-pip         create a bare virtualenv (no pip) and install nothing into it: for
                     offline tests, where the package index is out of reach
  --root DIR         install below DIR instead of / (a staging root, as DESTDIR; implies
                     --no-systemctl; the virtualenv is not relocatable, so this is for tests)
  --no-systemctl     do not run systemctl (daemon-reload, restart, disable)
  -h, --help         show this help
EOF
}

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }

root=""
source_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="python3"
pip_args=""
wheels=""
skip_pip=0
use_systemctl=1
mode="install"
purge=0

while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) mode="uninstall" ;;
        --purge) mode="uninstall"; purge=1 ;;
        --python) [ $# -ge 2 ] || die "--python needs a path"; python="$2"; shift ;;
        --source) [ $# -ge 2 ] || die "--source needs a directory"; source_dir="$2"; shift ;;
        --pip-args) [ $# -ge 2 ] || die "--pip-args needs a value"; pip_args="$2"; shift ;;
        --wheels) [ $# -ge 2 ] || die "--wheels needs a directory"; wheels="$2"; shift ;;
        --skip-pip) skip_pip=1 ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; root="$2"; shift ;;
        --no-systemctl) use_systemctl=0 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

if [ -n "$root" ]; then
    mkdir -p "$root"
    root="$(cd "$root" && pwd)"
    [ "$root" != "/" ] || root=""
    use_systemctl=0  # the host's systemd cannot see units inside a staging root
fi
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    die "run me as root (sudo $0), or pass --root DIR to stage into a directory"
fi
if [ -n "$wheels" ]; then
    [ -d "$wheels" ] || die "--wheels $wheels is not a directory"
    wheels="$(cd "$wheels" && pwd)"
    # pip builds the package from the checkout, and that build needs setuptools from here too.
    compgen -G "$wheels/setuptools-*.whl" >/dev/null \
        || die "--wheels $wheels has no setuptools wheel; add it: python3 -m pip wheel --wheel-dir $wheels 'setuptools>=68'"
fi

# Paths as the running system sees them (printed), and below the staging root (written).
app_dir="/opt/aggregator"
venv="$app_dir/venv"
conf_dir="/etc/aggregator"
cred_dir="$conf_dir/credentials"
unit="/etc/systemd/system/aggregator.service"
state_dir="/var/lib/aggregator"
# With DynamicUser=yes systemd keeps the data in /var/lib/private and links /var/lib to it.
private_state_dir="/var/lib/private/aggregator"

systemctl_quiet() {
    if [ "$use_systemctl" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
        systemctl "$@" || say "  (systemctl $* failed; continuing)"
    fi
}

uninstall() {
    say "Removing the aggregator service"
    systemctl_quiet disable --now aggregator.service
    rm -f "$root$unit"
    systemctl_quiet daemon-reload
    rm -rf "${root}${app_dir:?}"
    say "  removed $unit and $app_dir"
    if [ "$purge" -eq 1 ]; then
        rm -rf "${root}${conf_dir:?}" "$root$unit.d" "${root}${state_dir:?}" \
            "${root}${private_state_dir:?}"
        say "  purged $conf_dir (config and token), $unit.d and the database in $state_dir"
    else
        say "  kept $conf_dir (config and token) and $state_dir (the database)."
        say "  Remove them too with: $0 --uninstall --purge"
    fi
}

# Copy one shipped config file, keeping an operator's edits: a changed file stays as it is and
# the shipped version lands next to it as NAME.dist for comparison. A second argument names a
# folder of the config directory (models: a model retrained here is kept the same way).
install_config_file() {
    local shipped="$1" name target
    name="${2:+$2/}$(basename "$shipped")"
    target="$root$conf_dir/$name"
    if [ ! -e "$target" ]; then
        install -m 0644 "$shipped" "$target"
        say "  installed $conf_dir/$name"
    elif cmp -s "$shipped" "$target"; then
        rm -f "$target.dist"
        say "  unchanged $conf_dir/$name"
    else
        install -m 0644 "$shipped" "$target.dist"
        say "  kept your edited $conf_dir/$name; the shipped version is $conf_dir/$name.dist"
    fi
}

install_venv() {
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "$python is not Python 3.11 or newer (use --python PATH)"
    install -d -m 0755 "$root$app_dir"
    # A venv whose interpreter went away (an OS upgrade of Python) is rebuilt, not patched.
    if [ -e "$root$venv" ] && ! "$root$venv/bin/python" -c "" 2>/dev/null; then
        say "  the virtualenv at $venv is broken; recreating it"
        rm -rf "${root}${venv:?}"
    fi
    if [ ! -e "$root$venv" ]; then
        if [ "$skip_pip" -eq 1 ]; then
            "$python" -m venv --without-pip "$root$venv"
        else
            "$python" -m venv "$root$venv"
        fi
        say "  created the virtualenv $venv"
    else
        say "  reusing the virtualenv $venv"
    fi
}

install_package() {
    if ! "$root$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        "$root$venv/bin/python" -m ensurepip --upgrade >/dev/null  # offline: pip is bundled
    fi
    # Build from a clean copy so the checkout gets no root-owned build/ or *.egg-info.
    local stage
    stage="$(mktemp -d)"
    # shellcheck disable=SC2064  # expand $stage now: it is local to this function
    trap "rm -rf '$stage'" EXIT
    local parts=(pyproject.toml aggregator)
    [ -e "$source_dir/README.md" ] && parts+=(README.md)
    mkdir "$stage/src"
    # -h: the embedded defaults are symlinks into config/, which the copy does not hold
    tar -C "$source_dir" -h --exclude=__pycache__ -cf - "${parts[@]}" | tar -C "$stage/src" -xf -
    local extra=()
    if [ -n "$wheels" ]; then
        extra+=(--no-index --find-links "$wheels")
    fi
    if [ -n "$pip_args" ]; then
        local more=()
        read -r -a more <<<"$pip_args"
        extra+=("${more[@]}")
    fi
    local pip=("$root$venv/bin/python" -m pip --disable-pip-version-check)
    # Build the package once, then install that wheel.
    "${pip[@]}" wheel --quiet --no-deps --wheel-dir "$stage/dist" "${extra[@]}" "$stage/src"
    local built=("$stage"/dist/aggregator-*.whl)
    "${pip[@]}" install --quiet "${extra[@]}" "${built[0]}"
    # Reinstall the package alone: an upgrade that kept the version number still replaces the
    # code, while dependencies are only upgraded when the new version requires it.
    "${pip[@]}" install --quiet --force-reinstall --no-deps "${extra[@]}" "${built[0]}"
    rm -rf "$stage"
    trap - EXIT
    say "  installed the package into $venv"
}

install_all() {
    [ -f "$source_dir/pyproject.toml" ] || die "$source_dir is not an aggregator checkout (use --source DIR)"
    local shipped=("$source_dir"/config/*.toml)
    if [ ! -e "${shipped[0]}" ]; then
        shipped=("$source_dir"/aggregator/config/defaults/*.toml)
    fi
    [ -e "${shipped[0]}" ] || die "no default config (*.toml) in $source_dir/config"

    say "Installing the aggregator service${root:+ below $root}"
    install_venv
    if [ "$skip_pip" -eq 0 ]; then
        install_package
    else
        say "  skipped installing the package (--skip-pip)"
    fi

    install -d -m 0755 "$root$conf_dir"  # the mode ConfigurationDirectory= expects
    local file
    for file in "${shipped[@]}"; do
        install_config_file "$file"
    done
    # The shipped topics' relevance models, beside topics.toml as `aggregator train` writes them.
    local models=("$(dirname "${shipped[0]}")"/models/*.json)
    if [ -e "${models[0]}" ]; then
        install -d -m 0755 "$root$conf_dir/models"
        for file in "${models[@]}"; do
            install_config_file "$file" models
        done
    fi
    # PID 1 reads the token as root through LoadCredential=; the service user cannot.
    install -d -m 0700 "$root$cred_dir"
    chmod 0700 "$root$cred_dir"
    for file in "$root$cred_dir"/*; do
        [ -f "$file" ] && chmod 0600 "$file"
    done

    install -d -m 0755 "$(dirname "$root$unit")"
    if cmp -s "$source_dir/deploy/aggregator.service" "$root$unit"; then
        say "  unchanged $unit"
    else
        install -m 0644 "$source_dir/deploy/aggregator.service" "$root$unit"
        say "  installed $unit"
    fi
    systemctl_quiet daemon-reload
    if [ "$use_systemctl" -eq 1 ] && systemctl is-active --quiet aggregator.service 2>/dev/null; then
        say "  restarting the running service onto the new version"
        systemctl_quiet try-restart aggregator.service
    fi

    if [ -x "$root$venv/bin/aggregator" ]; then
        if "$root$venv/bin/aggregator" --config "$root$conf_dir" check-config >/dev/null 2>&1; then
            say "  the config in $conf_dir is valid"
        else
            say "  WARNING: the config in $conf_dir does not validate yet; see:"
            say "    $venv/bin/aggregator --config $conf_dir check-config"
        fi
    fi

    local token_file="$cred_dir/slack-bot-token"
    cat <<EOF

Done. Next steps:

1. Store the Slack bot token (xoxb-...). It never goes in a config file or in Environment=.
   Either as a root-only file, which systemd hands to the service through LoadCredential=:

     ( umask 077; systemd-ask-password -n "Slack bot token:" > $token_file )

   or encrypted with systemd-creds, so the file is useless on another machine:

     systemd-ask-password -n "Slack bot token:" \\
       | systemd-creds encrypt --name=slack-bot-token - $token_file.cred
     systemctl edit aggregator     # then add these three lines:
       [Service]
       LoadCredential=
       LoadCredentialEncrypted=slack-bot-token:$token_file.cred

2. Point the topics at your channels in $conf_dir/topics.toml, then check everything:

     $venv/bin/aggregator --config $conf_dir check-config

3. Start it now and at every boot, and watch it work:

     systemctl enable --now aggregator
     journalctl -u aggregator -f

   After editing the config: systemctl reload aggregator
EOF
}

if [ "$mode" = "uninstall" ]; then
    uninstall
else
    install_all
fi
