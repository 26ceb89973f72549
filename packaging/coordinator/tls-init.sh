#!/busybox/sh
# shellcheck shell=sh
# ECS runs this before the coordinator (dependsOn: SUCCESS). ECS resolved the config, the CA, the
# certificate (Parameter Store) and the private key (Secrets Manager) into this container's
# environment through the task definition's `secrets`; this writes them as files, mode 0600, into
# the task volume the coordinator mounts read-only, then exits. The coordinator container itself
# never has the key in its environment.
set -eu
umask 077
dir=${AUTOHEAL_DIR:-/run/autoheal}

: "${AUTOHEAL_CONFIG:?not set: the task definition must map it from Parameter Store}"
: "${AUTOHEAL_CA:?not set: the task definition must map it from Parameter Store}"
: "${AUTOHEAL_CERT:?not set: the task definition must map it from Parameter Store}"
: "${AUTOHEAL_KEY:?not set: the task definition must map it from Secrets Manager}"

# Through a temporary file and a rename: the coordinator never reads half a file.
write() {
  printf '%s\n' "$2" >"$dir/.$1.tmp"
  mv -f "$dir/.$1.tmp" "$dir/$1"
}
write coordinator.toml "$AUTOHEAL_CONFIG"
write ca.pem "$AUTOHEAL_CA"
write coordinator.pem "$AUTOHEAL_CERT"
write coordinator-key.pem "$AUTOHEAL_KEY"
echo "tls-init: wrote coordinator.toml, ca.pem, coordinator.pem and coordinator-key.pem to $dir"
