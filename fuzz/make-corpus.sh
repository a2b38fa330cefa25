#!/bin/sh
# Regenerates the seed corpora in corpus/ and the CA public keys in keys/ with
# the real ssh-keygen (docs/FUZZING.md). The CA private keys live in a
# temporary folder and are thrown away: the fuzz targets only need keys/*.pub.
# Run from anywhere; needs ssh-keygen (OpenSSH 8.2 or newer) and base64.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

rm -rf "$here/keys" "$here/corpus/certificate" "$here/corpus/revocation" "$here/corpus/config"
mkdir -p "$here/keys" "$here/corpus/certificate" "$here/corpus/revocation" "$here/corpus/config"

key() { # key NAME TYPE [BITS]
    if [ -n "${3:-}" ]; then ssh-keygen -q -N '' -C "$1" -t "$2" -b "$3" -f "$1"
    else ssh-keygen -q -N '' -C "$1" -t "$2" -f "$1"; fi
}

key ca-ed25519 ed25519
key ca-ecdsa ecdsa 256
key ca-rsa rsa 2048
key user-ed25519 ed25519
key user-ecdsa ecdsa 384
key user-rsa rsa 2048
key other ed25519
for ca in ca-ed25519 ca-ecdsa ca-rsa; do cp "$ca.pub" "$here/keys/"; done

n=0
cert() { # cert NAME CA KEY [ssh-keygen options...]: writes text and binary seeds
    name=$1; ca=$2; k=$3; shift 3
    n=$((n + 1))
    cp "$k.pub" "c$n.pub"
    ssh-keygen -q -s "$ca" "$@" "c$n.pub"
    cp "c$n-cert.pub" "$here/corpus/certificate/$name.txt"
    cut -d' ' -f2 "c$n-cert.pub" | base64 -d > "$here/corpus/certificate/$name.bin"
}
cert alice ca-ed25519 user-ed25519 -I alice@laptop -n alice -z 7 -V always:forever
cert bob-source-address ca-ed25519 user-ecdsa -I bob -n bob,alice -z 8 -V 20200101:20991231 \
    -O source-address=10.0.0.0/8,127.0.0.1,::1
cert carol-no-forwarding ca-ed25519 user-rsa -I carol -n carol -V always:forever -O no-port-forwarding
cert force-command ca-ecdsa user-ed25519 -I force -n alice -V always:forever -O force-command=/bin/true
cert rsa-sha512-ca ca-rsa user-ed25519 -I rsa-ca -n alice -V always:forever -t rsa-sha2-512
cert rsa-sha1-ca ca-rsa user-ecdsa -I rsa-sha1 -n alice -V always:forever -t ssh-rsa
cert host-cert ca-ed25519 user-ed25519 -I host -h -n bastion.example.com -V always:forever
cert expired ca-ed25519 user-ed25519 -I expired -n alice -V 20000101:20010101
cert extensions ca-ed25519 user-ed25519 -I opts -n alice -V always:forever -O clear \
    -O permit-port-forwarding -O critical:verify-required -O extension:custom@example.com=x
cert no-principals ca-ecdsa user-rsa -I noprincipal -V always:forever
cert untrusted-ca other user-ed25519 -I untrusted -n alice -V always:forever
# valid_before past i64::MAX seconds (and not "forever"): check() must not
# panic turning it into a SystemTime (docs/FUZZING.md, known bug 1).
cert far-future ca-ed25519 user-ed25519 -I far-future -n alice -V always:0x8000000000000001
# Plain public keys parse as neither; they steer the fuzzer to the key formats.
cp user-ecdsa.pub "$here/corpus/certificate/plain-ecdsa.txt"

# Certificates the revocation target checks every parsed list against.
cp c1-cert.pub "$here/keys/alice-cert.pub"
cp c2-cert.pub "$here/keys/bob-cert.pub"
cp user-rsa.pub "$here/keys/user-rsa.pub"

r=0
krl() { # krl [-s CA] spec lines...
    r=$((r + 1))
    s=
    if [ "$1" = -s ]; then s="-s $2"; shift 2; fi
    : > "spec$r"
    for line in "$@"; do printf '%s\n' "$line" >> "spec$r"; done
    # shellcheck disable=SC2086
    ssh-keygen -q -k -f "$here/corpus/revocation/krl$r" $s -z "$r" "spec$r"
}
krl -s ca-ed25519.pub "serial: 7" "serial: 10-20" "serial: 100" "serial: 102" "serial: 104"
krl -s ca-ed25519.pub "id: alice@laptop" "id: bob"
krl "key: $(cat user-rsa.pub)" "sha1: $(cat user-ecdsa.pub)" "sha256: $(cat other.pub)"
krl -s ca-ecdsa.pub "serial: 1-1000" "serial: 5000" "id: force" "key: $(cat user-ed25519.pub)"
krl "hash: $(ssh-keygen -lf other.pub | cut -d' ' -f2)"
r=$((r + 1)); ssh-keygen -q -k -f "$here/corpus/revocation/krl$r" -z 1 c1-cert.pub user-rsa.pub
# Text lists, as sshd's RevokedKeys also takes.
{ echo "# revoked"; cat user-rsa.pub; echo; cat c1-cert.pub; } > "$here/corpus/revocation/list1"
cat user-ed25519.pub user-ecdsa.pub > "$here/corpus/revocation/list2"

cp "$here/../config/portvakt.example.toml" "$here/corpus/config/example.toml"
cat > "$here/corpus/config/minimal.toml" <<TOML
[[targets]]
name = "db-1"
host = "10.0.1.5"
allow_users = ["alice"]
TOML
cat > "$here/corpus/config/targets.toml" <<TOML
[server]
listen = ["127.0.0.1:2222", "[::1]:2222"]
max_connections = 10
max_unauthenticated = 20
login_grace_time = "90s"
public_name = "bastion.example.com:2222"
proxy_protocol_from = ["10.0.0.10", "fd00::/8"]

[auth]
deny_users = ["admin"]
max_auth_tries = 3

[mfa]
totp = "off"

[lockout]
max_failures = 3
window = "1m"
ban = "1h"

[[users]]
name = "ci"
groups = ["deploy"]
keys = ["$(cat user-ed25519.pub)"]
mfa = "none"

[[targets]]
name = "web"
host = "web.internal"
port = 2222
allow_groups = ["deploy"]

[[targets]]
name = "v6"
cidr = "2001:db8::/64"
ports = [22, 443]
allow_users = ["alice", "bob"]

[[targets]]
name = "lab"
cidr = "10.20.0.0/24"
ports = [22]
allow_groups = ["sre"]
TOML
echo "seeds written to $here/corpus, CA keys to $here/keys"
