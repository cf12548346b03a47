#!/usr/bin/env bash
# images.sh — the container images for the real node, built here without Docker and reproducibly
# (same inputs, same digest). Nothing is pulled from any container registry: the broker images are
# Debian's mosquitto packages from deb.debian.org (fetched through a private apt configuration),
# the moat image is the release binary on Debian's libc6/libgcc-s1, the pause image is pause.c
# compiled statically; crane (Go module proxy) assembles them against a loopback-only registry.
#
#   hack/images.sh build [--refresh] [all|pause|brokers|moat]
#                                     build what is missing into $MOAT_CACHE/images (warm: seconds);
#                                     --refresh re-reads the Debian indexes and re-resolves the pins
#   hack/images.sh load               import the built images into the node's containerd (skips
#                                     refs already there with the same digest)
#   hack/images.sh list [-l]          the built refs (-l: ref, digest, OCI tarball)
#   hack/images.sh ref moat|pause     one built ref (moat.local/moat:<version>-<sha256 of the binary, 12 hex>;
#                                     with MOAT_BINARY: the image of that binary)
#   hack/images.sh verify             run every image's binaries from its extracted rootfs (no node needed)
#
# Environment:
#   MOAT_CACHE           cache root (default ~/.cache/moat); everything lands in $MOAT_CACHE/images
#   CTR, CONTAINERD_ADDRESS   ctr binary and socket of the node's containerd (defaults: NODE_* below)
#   MOAT_BINARY          use this moat binary instead of `cargo build --release --locked --bin moat`
#                        (e.g. target/debug/moat for tests: the image gets it without debug info)
#   PAUSE_BIN            use this static pause binary (default: the node's, else compiled here)
# What was verified, digests, times and sizes: hack/README.md, section "Images".
set -Eeuo pipefail
shopt -s inherit_errexit   # a failure inside $(...) stops the script too
trap 'printf "[images] ERROR: \"%s\" failed (line %s, exit %s)\n" "$BASH_COMMAND" "$LINENO" "$?" >&2' ERR
umask 022
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MOAT_CACHE:-$HOME/.cache/moat}
IMG=$CACHE/images
CRANE_VERSION=v0.22.1
CRANE=$CACHE/bin/crane-$CRANE_VERSION/crane
K8S_VERSION=${K8S_VERSION:-v1.36.3}          # pause.c comes from this k8s.io/kubernetes module

# ---- the node's containerd: the one place to change (hack/local-node.sh owns these paths) ----
NODE_CTR=$CACHE/bin/node/ctr
NODE_CONTAINERD_ADDRESS=$REPO/.local-cluster/node/containerd/containerd.sock
NODE_PAUSE=$CACHE/bin/node/pause
CTR=${CTR:-$NODE_CTR}
CONTAINERD_ADDRESS=${CONTAINERD_ADDRESS:-$NODE_CONTAINERD_ADDRESS}
CTR_NAMESPACE=k8s.io

# ---- what is built ----
# Broker images: ref, Debian suite, exact version of Debian's mosquitto package (the tag is its
# upstream part). The rest of the package closure is pinned in $IMG/locks on the first build.
BROKERS=(
  "moat.local/mosquitto:2.0.11          bookworm  2.0.11-1.2+deb12u2"
  "moat.local/mosquitto-deb12u1:2.0.11  bookworm  2.0.11-1.2+deb12u1"
  "moat.local/mosquitto:2.0.21          trixie    2.0.21-1"
  "moat.local/mosquitto:2.1.2           sid       2.1.2-3"
)
# Upgrade-rollback test images: 2.0.11 under another name (same digest), and 2.0.21 plus a layer
# that deletes libssl.so.3, so /usr/sbin/mosquitto dies in the loader (exit 127).
BROKEN_SAME=moat.local/mosquitto-broken:2.0.11
BROKEN_SAME_OF=moat.local/mosquitto:2.0.11
BROKEN=moat.local/mosquitto-broken:2.0.21
BROKEN_OF=moat.local/mosquitto:2.0.21
BROKEN_REMOVES=usr/lib/x86_64-linux-gnu/libssl.so.3
PAUSE_REF=moat.local/pause:3.10
MOAT_REPO=moat.local/moat
MOAT_SUITE=bookworm            # the Dockerfile's runtime is distroless cc-debian12
MOAT_PKGS=(libc6 libgcc-s1 ca-certificates base-files)

# Packages in the dependency closure that a broker in a container does not need: maintainer-script
# and init glue (adduser, debconf, sysusers, init scripts) and the debconf installer frontends.
SKIP_PKGS="adduser lsb-base sysvinit-utils init-system-helpers debconf cdebconf debconf-2.0
  libdebian-installer4 libdebconfclient0 libnewt0.52 libslang2 libtextwrap1 libelogind0
  systemd systemd-standalone-sysusers opensysusers systemd-sysusers passwd login.defs base-passwd
  dpkg install-info tar"
# Removed from every rootfs: documentation, init-system files, glibc's iconv modules (8 MB; neither
# Mosquitto nor moat converts character sets).
PRUNE=(usr/share/doc usr/share/man usr/share/info usr/share/lintian usr/share/bug usr/share/locale
       etc/init.d etc/logrotate.d etc/systemd usr/lib/systemd usr/lib/tmpfiles.d usr/lib/sysusers.d
       usr/lib/x86_64-linux-gnu/gconv)
PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SDE=1970-01-01T00:00:00Z       # the image "created" time (crane leaves Go's zero time, 0001-01-01)
REFRESH=false

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

with_progress() { # label cmd... — a progress line every 30 s, the duration at the end
  local label=$1; shift
  local start=$SECONDS
  "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && log "$label: still running ($((SECONDS - start)) s)"
  done
  wait "$pid" || die "$label failed"
  log "$label: done in $((SECONDS - start)) s"
}

sha() { sha256sum "$@" | cut -d' ' -f1; }
safe() { printf '%s' "$1" | tr '/:' '__'; }     # ref -> file name
oci_tar() { echo "$IMG/oci/$(safe "$1").oci.tar"; }
SELF_SHA=$(sha "${BASH_SOURCE[0]}")              # a recipe change rebuilds everything

# ------------------------------------------------------------- crane ----
ensure_crane() {
  [[ -x $CRANE ]] && return 0
  command -v go >/dev/null || die "go not found: crane is built from the Go module proxy"
  (
    export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local}
    export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOPATH=$CACHE/go/path
    mkdir -p "$GOMODCACHE" "$GOCACHE" "$GOPATH" "$(dirname "$CRANE")"
    GOBIN=$(dirname "$CRANE") with_progress "crane $CRANE_VERSION: go install" \
      go install -trimpath -ldflags "-s -w" "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
  )
  "$CRANE" version >/dev/null
}

# crane mutate works against a registry: one in-memory `crane registry serve` on a free loopback
# port, started on first use, stopped (by PID) when the script exits.
REG='' REG_PID='' WORK=''
cleanup() {
  if [[ -n $REG_PID ]]; then kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; fi
  if [[ -n $WORK ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
workdir() { [[ -n $WORK ]] || { mkdir -p "$IMG/tmp"; WORK=$(mktemp -d "$IMG/tmp/build.XXXXXX"); }; }
registry_up() {
  [[ -n $REG ]] && return 0
  ensure_crane; workdir
  : > "$WORK/registry.log"   # exists before the background job opens it (sed below polls it)
  "$CRANE" registry serve --address 127.0.0.1:0 >"$WORK/registry.log" 2>&1 &
  REG_PID=$!
  local port='' i
  for ((i = 0; i < 100; i++)); do
    port=$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$WORK/registry.log")
    [[ -n $port ]] && break
    kill -0 "$REG_PID" 2>/dev/null || { cat "$WORK/registry.log" >&2; die "crane registry exited"; }
    sleep 0.1
  done
  [[ -n $port ]] || die "crane registry did not start"
  REG=127.0.0.1:$port
  log "crane registry on $REG (pid $REG_PID, in memory, stopped on exit)"
}
crane() { "$CRANE" "$@" 2>>"$WORK/crane.log"; }

# ---------------------------------------------------------- Debian apt ----
# One private apt configuration per suite under $IMG/apt/<suite>: its own sources, lists, cache
# and an empty dpkg status; APT_CONFIG is read first and points every other apt path there, so the
# machine's /etc/apt is neither read nor written.
apt_dir() { echo "$IMG/apt/$1"; }
apt_setup() { # suite
  local s=$1 d; d=$(apt_dir "$s")
  [[ -s $d/apt.conf ]] && return 0
  mkdir -p "$d"/{etc/apt.conf.d,etc/sources.list.d,etc/preferences.d,etc/trusted.gpg.d,state/lists/partial,cache/archives/partial,log}
  : > "$d/state/status"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -s $keyring ]] || die "$keyring missing (Debian's debian-archive-keyring package)"
  {
    if [[ $s == bookworm ]]; then
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: %s\n\n' "$keyring"
      printf 'Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\nSigned-By: %s\n' "$keyring"
    else
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: %s\n' "$s" "$keyring"
    fi
  } > "$d/etc/sources.list.d/moat-images.sources"
  cat > "$d/apt.conf.tmp" <<EOF
Dir::Etc::Parts "$d/etc/apt.conf.d";
Dir::Etc::Main "/dev/null";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$d/etc/sources.list.d";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$d/etc/preferences.d";
Dir::Etc::Trusted "/dev/null";
Dir::Etc::TrustedParts "$d/etc/trusted.gpg.d";
Dir::State "$d/state";
Dir::State::status "$d/state/status";
Dir::Cache "$d/cache";
Dir::Log "$d/log";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
Acquire::Languages "none";
// indexes stay compressed and no binary caches are kept: ~10 MB per suite instead of ~140 MB
Acquire::GzipIndexes "true";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
// deb.debian.org's sid Release here was past its Valid-Until (the signature still verifies).
Acquire::Check-Valid-Until "false";
EOF
  mv "$d/apt.conf.tmp" "$d/apt.conf"
}
apt_q() { local s=$1; shift; APT_CONFIG="$(apt_dir "$s")/apt.conf" "$@"; }
apt_update() { # suite — once per suite unless --refresh
  local s=$1 d; d=$(apt_dir "$s")
  apt_setup "$s"
  if [[ -f $d/state/updated && $REFRESH != true ]]; then return 0; fi
  with_progress "apt-get update ($s, private config)" apt_q "$s" apt-get update -qq
  touch "$d/state/updated"
}

# The dependency closure of mosquitto=<version> in a suite, minus $SKIP_PKGS.
closure() { # suite version
  apt_q "$1" apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances "mosquitto=$2" |
  python3 -c '
import re, sys
root, skip = "mosquitto", set(sys.argv[1].split())
deps, cur, alt = {}, None, False   # deps[pkg] = [group]; group = [(name, virtual, providers)]
for line in sys.stdin:
    line = line.rstrip("\n")
    if not line.startswith(" "):
        cur = line.strip().split("=")[0]; deps.setdefault(cur, []); alt = False; continue
    m = re.match(r"^  (\|?)(?:Pre)?Depends: (<?)([^<>]*)>?$", line)
    if m:
        if not alt: deps[cur].append([])
        deps[cur][-1].append((m.group(3), bool(m.group(2)), [])); alt = bool(m.group(1)); continue
    m = re.match(r"^    (\S+)$", line)          # a package providing the dependency above
    if m and deps[cur]: deps[cur][-1][-1][2].append(m.group(1)); continue
    alt = False
seen, todo = set(), [root]
while todo:
    p = todo.pop()
    if p in seen or p in skip: continue
    seen.add(p)
    for group in deps.get(p, []):
        if any(n in skip for n, _, _ in group): continue   # glue that a skipped package satisfies
        cands = [n for n, virtual, _ in group if not virtual] + [q for _, _, prov in group for q in prov]
        cands = [c for c in cands if c not in skip]
        if cands: todo.append(cands[0])
print("\n".join(sorted(seen)))
' "$SKIP_PKGS"
}

has_version() { # suite pkg version
  apt_q "$1" apt-cache madison "$2" | awk -v v="$3" -F'|' '{gsub(/ /, "", $2)} $2 == v {f = 1} END {exit !f}'
}
versions() { # suite version pkgs... -> "pkg=version" lines: the given version where the suite has
  # it (packages built from the mosquitto source), else the candidate apt would install
  local s=$1 v=$2; shift 2
  { apt_q "$s" apt-cache madison "$@" | awk -v v="$v" -F'|' '{gsub(/ /, "", $1); gsub(/ /, "", $2)} $2 == v {print "same", $1}'
    apt_q "$s" apt-cache policy "$@" | awk '/^[^ ].*:$/ {p = substr($0, 1, length($0) - 1)} /^  Candidate: / {print "cand", p, $2}'
  } | awk -v v="$v" '$1 == "same" {same[$2] = 1} $1 == "cand" {c[$2] = $3; order[++n] = $2}
      END {for (i = 1; i <= n; i++) {p = order[i]; if (c[p] == "(none)") {print "missing " p; continue}
           print p "=" (p in same ? v : c[p])}}'
}

# Pins: $IMG/locks/<name>.lock, "package=version" per line. Written once, then re-used, so a
# rebuild needs no network and gives the same image (build --refresh re-resolves them).
resolve_broker() { # lockfile suite version
  local lock=$1 s=$2 v=$3
  if [[ -s $lock && $REFRESH != true ]]; then return 0; fi
  apt_update "$s"
  has_version "$s" mosquitto "$v" ||
    die "mosquitto=$v is not in Debian $s any more (apt-cache madison: $(apt_q "$s" apt-cache madison mosquitto | awk '{print $3}' | tr '\n' ' '))"
  local pkgs out
  pkgs=$(closure "$s" "$v")
  [[ $pkgs == *mosquitto* ]] || die "empty dependency closure for mosquitto=$v ($s)"
  # shellcheck disable=SC2086
  out=$(versions "$s" "$v" $pkgs base-files)
  [[ $out != *missing* ]] || die "no candidate in $s for: $(grep missing <<< "$out" | tr '\n' ' ')"
  mkdir -p "$(dirname "$lock")"
  sort <<< "$out" > "$lock.tmp" && mv "$lock.tmp" "$lock"
  log "pinned $(wc -l < "$lock") packages for mosquitto=$v ($s): $lock"
}
resolve_list() { # lockfile suite pkgs...
  local lock=$1 s=$2 out; shift 2
  if [[ -s $lock && $REFRESH != true ]]; then return 0; fi
  apt_update "$s"
  out=$(versions "$s" none "$@")
  [[ $out != *missing* ]] || die "no candidate in $s for: $(grep missing <<< "$out" | tr '\n' ' ')"
  mkdir -p "$(dirname "$lock")"
  sort <<< "$out" > "$lock.tmp" && mv "$lock.tmp" "$lock"
}

deb_file() { # pkg version -> path in the cache (may not exist yet)
  local f=("$IMG/debs/${1}_${2//:/%3a}_"*.deb)
  [[ -e ${f[0]} ]] && echo "${f[0]}" || echo ""
}
fetch_debs() { # suite lockfile — downloads the pinned .debs missing from $IMG/debs
  local s=$1 lock=$2 line missing=()
  while read -r line; do
    [[ -n $(deb_file "${line%%=*}" "${line#*=}") ]] || missing+=("$line")
  done < "$lock"
  ((${#missing[@]})) || return 0
  apt_update "$s"
  mkdir -p "$IMG/debs"
  local start=$SECONDS
  (cd "$IMG/debs" && apt_q "$s" apt-get download -qq "${missing[@]}") ||
    die "apt-get download failed ($s: ${missing[*]}); pins older than the Debian indexes? try: $0 build --refresh"
  log "downloaded ${#missing[@]} .debs from deb.debian.org ($s) in $((SECONDS - start)) s"
}

# --------------------------------------------------------------- rootfs ----
merged_usr() { # root — the merged-/usr layout of current Debian (base-files' symlinks)
  mkdir -p "$1"/usr/{bin,sbin,lib,lib64}
  ln -s usr/bin "$1/bin"; ln -s usr/sbin "$1/sbin"; ln -s usr/lib "$1/lib"; ln -s usr/lib64 "$1/lib64"
}
extract_debs() { # root lockfile — dpkg-deb's data into root (no maintainer scripts run)
  local root=$1 lock=$2 line p v deb x
  mkdir -p "$root/var/lib/dpkg/status.d"
  while read -r line; do
    p=${line%%=*} v=${line#*=}
    deb=$(deb_file "$p" "$v"); [[ -n $deb ]] || die "missing .deb for $line"
    case $p in
      base-files)  # only /etc/os-release (scanners identify the distribution from it)
        x=$(mktemp -d "$WORK/x.XXXXXX"); dpkg-deb -x "$deb" "$x"
        install -D -m 0644 "$x/usr/lib/os-release" "$root/usr/lib/os-release"
        mkdir -p "$root/etc"; ln -sfn ../usr/lib/os-release "$root/etc/os-release"; rm -rf "$x";;
      ca-certificates)  # only the bundle update-ca-certificates would build (Mozilla's roots)
        x=$(mktemp -d "$WORK/x.XXXXXX"); dpkg-deb -x "$deb" "$x"
        mkdir -p "$root/etc/ssl/certs"
        find "$x/usr/share/ca-certificates" -name '*.crt' | sort | xargs cat > "$root/etc/ssl/certs/ca-certificates.crt"
        chmod 0644 "$root/etc/ssl/certs/ca-certificates.crt"; rm -rf "$x";;
      *) dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$root";;
    esac
    # distroless-style package records, so image scanners see what is inside
    dpkg-deb -f "$deb" Package Source Version Architecture Maintainer Installed-Size Depends Pre-Depends \
      Multi-Arch Homepage Section Priority Description > "$root/var/lib/dpkg/status.d/$p"
  done < "$lock"
}
accounts() { # root — root, mosquitto 1883 (as in the eclipse-mosquitto image), nonroot 65532
  mkdir -p "$1/etc"
  printf '%s\n' 'root:x:0:0:root:/root:/usr/sbin/nologin' \
    'mosquitto:x:1883:1883:mosquitto:/var/lib/mosquitto:/usr/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin' > "$1/etc/passwd"
  printf '%s\n' 'root:x:0:' 'mosquitto:x:1883:' 'nonroot:x:65532:' > "$1/etc/group"
  chmod 0644 "$1/etc/passwd" "$1/etc/group"
  install -d -m 0700 "$1/root"; install -d -m 0700 -o 65532 -g 65532 "$1/home/nonroot"
  install -d -m 1777 "$1/tmp"
}
finish_rootfs() { # root — prune, SONAME links, ownership
  local root=$1 p
  for p in "${PRUNE[@]}"; do rm -rf "${root:?}/$p"; done
  # the SONAME symlinks ldconfig makes at install time (some packages ship only libfoo.so.1.2)
  ldconfig -N -r "$root"
  chown -R 0:0 "$root"
  chmod 0755 "$root"
}
layer_tar() { # root out — a deterministic tar: sorted, mtime 0, numeric owners, no atime/xattrs
  tar --format=gnu --sort=name --mtime=@0 --numeric-owner -C "$1" -cf "$2.tmp" .
  mv "$2.tmp" "$2"
  # cached layers are named <name>-<key>.tar: drop this name's layers of older keys
  local old; for old in "${2%-*}"-????????????????.tar; do [[ $old == "$2" || ! -e $old ]] || rm -f "$old"; done
}

broker_layer() { # name suite lockfile -> prints the cached layer path
  local name=$1 s=$2 lock=$3 key out
  key=$(cat "$lock" <(echo "$SELF_SHA") | sha | cut -c1-16)
  out=$IMG/layers/$name-$key.tar
  if [[ -s $out ]]; then echo "$out"; return 0; fi
  local start=$SECONDS root
  {
    fetch_debs "$s" "$lock"
    workdir; mkdir -p "$IMG/layers"
    root=$(mktemp -d "$WORK/root.XXXXXX")
    merged_usr "$root"; extract_debs "$root" "$lock"
    finish_rootfs "$root"; accounts "$root"
    install -d -m 0755 -o 1883 -g 1883 "$root/var/lib/mosquitto" "$root/run/mosquitto" \
      "$root/mosquitto" "$root/mosquitto/data" "$root/moat" "$root/moat/run" "$root/moat/secrets"
    [[ -x $root/usr/sbin/mosquitto ]] || die "$name: no /usr/sbin/mosquitto in the rootfs"
    layer_tar "$root" "$out"; rm -rf "$root"
  } >&2
  log "$name: rootfs layer $(du -h "$out" | cut -f1) ($(wc -l < "$lock") packages) in $((SECONDS - start)) s"
  echo "$out"
}

broken_layer() { # -> a layer that deletes $BROKEN_REMOVES (an OCI whiteout)
  local out; out=$IMG/layers/broken-$(printf '%s %s' "$BROKEN_REMOVES" "$SELF_SHA" | sha | cut -c1-16).tar
  if [[ -s $out ]]; then echo "$out"; return 0; fi
  workdir; mkdir -p "$IMG/layers"
  local root; root=$(mktemp -d "$WORK/root.XXXXXX"); chmod 0755 "$root"
  install -d -m 0755 "$root/$(dirname "$BROKEN_REMOVES")"
  : > "$root/$(dirname "$BROKEN_REMOVES")/.wh.$(basename "$BROKEN_REMOVES")"
  layer_tar "$root" "$out"; rm -rf "$root"; echo "$out"
}

moat_base_layer() { # -> Debian bookworm libc6 + libgcc-s1 + CA bundle, no shell, no package manager
  local lock=$IMG/locks/moat-base.lock key out
  resolve_list "$lock" "$MOAT_SUITE" "${MOAT_PKGS[@]}" >&2
  key=$(cat "$lock" <(echo "$SELF_SHA") | sha | cut -c1-16)
  out=$IMG/layers/moat-base-$key.tar
  if [[ -s $out ]]; then echo "$out"; return 0; fi
  local root extra
  {
    fetch_debs "$MOAT_SUITE" "$lock"
    workdir; mkdir -p "$IMG/layers"
    root=$(mktemp -d "$WORK/root.XXXXXX")
    merged_usr "$root"; extract_debs "$root" "$lock"
    finish_rootfs "$root"; accounts "$root"
    install -d -m 0755 -o 1883 -g 1883 "$root/moat" "$root/moat/run" "$root/moat/secrets"
    extra=$(find "$root"/usr/bin "$root"/usr/sbin "$root"/usr/local -mindepth 1 2>/dev/null || true)
    [[ -z $extra ]] || die "moat base would contain executables: $extra"
    layer_tar "$root" "$out"; rm -rf "$root"
  } >&2
  log "moat base: layer $(du -h "$out" | cut -f1)"
  echo "$out"
}

# ---------------------------------------------------------------- image ----
# make_image ref key history-json layer... ; the image config comes from the MUTATE array.
# crane append (OCI empty base) -> crane mutate -> crane edit config (fixed created times,
# history) -> crane pull --format=oci -> our own index.json (containerd name) -> sorted tar.
make_image() {
  local ref=$1 key=$2 history=$3; shift 3
  local out start=$SECONDS; out=$(oci_tar "$ref")
  registry_up
  local repo l args=()
  repo=$REG/build/$(safe "$ref" | tr 'A-Z_.' 'a-z--')
  for l in "$@"; do args+=(-f "$l"); done
  crane append --insecure --oci-empty-base "${args[@]}" -t "$repo:layers" >/dev/null
  crane mutate --insecure "$repo:layers" --set-platform linux/amd64 "${MUTATE[@]}" -t "$repo:mutated" >/dev/null
  crane config --insecure "$repo:mutated" | python3 -c '
import json, sys
c = json.load(sys.stdin); created = sys.argv[1]; hist = json.loads(sys.argv[2])
c["created"] = created
c["history"] = [{"created": created, "created_by": h} for h in hist]
assert len(c["history"]) == len(c["rootfs"]["diff_ids"]), "one history entry per layer"
sys.stdout.write(json.dumps(c, separators=(",", ":"), sort_keys=True))
' "$SDE" "$history" | crane edit config --insecure "$repo:mutated" -t "$repo:final" >/dev/null
  local digest; digest=$(crane digest --insecure "$repo:final")
  local lay; lay=$(mktemp -d "$WORK/oci.XXXXXX")
  crane pull --insecure --format=oci "$repo:final" "$lay/layout"
  python3 - "$lay/layout" "$ref" "$digest" <<'PY'
import json, os, sys
d, ref, digest = sys.argv[1:]
m = json.load(open(os.path.join(d, "index.json")))["manifests"]
assert len(m) == 1 and m[0]["digest"] == digest, m
desc = {"mediaType": m[0]["mediaType"], "digest": digest, "size": m[0]["size"],
        "platform": {"architecture": "amd64", "os": "linux"},
        # containerd names the import after io.containerd.image.name
        "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref}}
idx = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [desc]}
open(os.path.join(d, "index.json"), "w").write(json.dumps(idx, indent=2, sort_keys=True) + "\n")
PY
  mkdir -p "$IMG/oci"
  oci_pack "$lay/layout" "$out.tmp"
  mv "$out.tmp" "$out"; rm -rf "$lay"
  printf '%s %s\n' "$key" "$digest" > "${out%.oci.tar}.key"
  log "$ref: $digest ($(du -h "$out" | cut -f1), $((SECONDS - start)) s)"
}
oci_pack() { # layout-dir out — the OCI layout as a deterministic tar
  find "$1" -type d -exec chmod 0755 {} +; find "$1" -type f -exec chmod 0644 {} +
  tar --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -cf "$2" oci-layout index.json blobs
}
up_to_date() { # ref key
  local k; k=${1}; k=$(oci_tar "$k"); k=${k%.oci.tar}.key
  [[ -s $(oci_tar "$1") && -s $k && $(cut -d' ' -f1 "$k") == "$2" ]]
}
digest_of() { local k; k=$(oci_tar "$1"); cut -d' ' -f2 "${k%.oci.tar}.key"; }

BUILT=()   # refs of this build, in order
build_brokers() {
  local entry ref s v name lock layer key
  for entry in "${BROKERS[@]}"; do
    read -r ref s v <<< "$entry"
    [[ ${ref##*:} == "${v%%-*}" ]] || die "$ref: tag is not the upstream version of $v"
    name=$(safe "${ref#moat.local/}"); lock=$IMG/locks/$name.lock
    resolve_broker "$lock" "$s" "$v"
    key=$(cat "$lock" <(echo "$SELF_SHA") | sha)
    if ! up_to_date "$ref" "$key"; then
      layer=$(broker_layer "$name" "$s" "$lock")
      MUTATE=(--entrypoint /usr/sbin/mosquitto --user 1883:1883 --workdir / --env "$PATH_ENV"
              -l "org.opencontainers.image.title=mosquitto" -l "org.opencontainers.image.version=${v%%-*}"
              -l "dev.moat.debian.suite=$s" -l "dev.moat.debian.mosquitto=$v")
      make_image "$ref" "$key" "[\"hack/images.sh: Debian $s mosquitto=$v, $(wc -l < "$lock") packages\"]" "$layer"
    fi
    BUILT+=("$ref")
  done
  # the same image under the broken repository: a copy of the tarball with the other name
  local src; src=$(oci_tar "$BROKEN_SAME_OF"); key=$(cut -d' ' -f1 "${src%.oci.tar}.key")
  if ! up_to_date "$BROKEN_SAME" "$key"; then
    workdir; local lay; lay=$(mktemp -d "$WORK/oci.XXXXXX"); tar -xf "$src" -C "$lay"
    sed -i "s|\"$BROKEN_SAME_OF\"|\"$BROKEN_SAME\"|g" "$lay/index.json"
    oci_pack "$lay" "$(oci_tar "$BROKEN_SAME").tmp"
    mv "$(oci_tar "$BROKEN_SAME").tmp" "$(oci_tar "$BROKEN_SAME")"; rm -rf "$lay"
    local k; k=$(oci_tar "$BROKEN_SAME"); printf '%s %s\n' "$key" "$(digest_of "$BROKEN_SAME_OF")" > "${k%.oci.tar}.key"
    log "$BROKEN_SAME: same image as $BROKEN_SAME_OF ($(digest_of "$BROKEN_SAME"))"
  fi
  BUILT+=("$BROKEN_SAME")
  # 2.0.21 + a whiteout of libssl.so.3
  local base_lock; base_lock=$IMG/locks/$(safe "${BROKEN_OF#moat.local/}").lock
  key=$(cat "$base_lock" <(echo "$SELF_SHA broken $BROKEN_REMOVES") | sha)
  if ! up_to_date "$BROKEN" "$key"; then
    local e bs bv; for e in "${BROKERS[@]}"; do read -r ref bs bv <<< "$e"; [[ $ref == "$BROKEN_OF" ]] && break; done
    layer=$(broker_layer "$(safe "${BROKEN_OF#moat.local/}")" "$bs" "$base_lock")
    local wl; wl=$(broken_layer)
    MUTATE=(--entrypoint /usr/sbin/mosquitto --user 1883:1883 --workdir / --env "$PATH_ENV"
            -l "org.opencontainers.image.title=mosquitto (broken on purpose)" -l "org.opencontainers.image.version=${bv%%-*}"
            -l "dev.moat.debian.suite=$bs" -l "dev.moat.debian.mosquitto=$bv"
            -l "dev.moat.test.broken=/$BROKEN_REMOVES deleted: mosquitto fails in the dynamic loader")
    make_image "$BROKEN" "$key" \
      "[\"hack/images.sh: Debian $bs mosquitto=$bv, $(wc -l < "$base_lock") packages\", \"hack/images.sh: delete /$BROKEN_REMOVES (test image: the broker cannot start)\"]" \
      "$layer" "$wl"
  fi
  BUILT+=("$BROKEN")
}

cargo_version() { sed -n '/^\[package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -1; }
moat_binary() { # -> path of the release binary (built unless MOAT_BINARY is set)
  if [[ -n ${MOAT_BINARY:-} ]]; then [[ -x $MOAT_BINARY ]] || die "MOAT_BINARY=$MOAT_BINARY is not executable"; echo "$MOAT_BINARY"; return 0; fi
  command -v cargo >/dev/null || die "cargo not found (or set MOAT_BINARY)"
  (cd "$REPO" && with_progress "cargo build --release --locked --bin moat" cargo build -q --release --locked --bin moat) >&2
  echo "${CARGO_TARGET_DIR:-$REPO/target}/release/moat"
}
moat_ref_for() { echo "$MOAT_REPO:$(cargo_version)-$(sha "$1" | cut -c1-12)"; }

build_moat() {
  local bin ref base key; bin=$(moat_binary)
  ref=$(moat_ref_for "$bin")
  base=$(moat_base_layer)
  key=$(printf '%s %s %s' "$(sha "$bin")" "$(basename "$base")" "$SELF_SHA" | sha)
  if ! up_to_date "$ref" "$key"; then
    workdir
    local root; root=$(mktemp -d "$WORK/root.XXXXXX"); chmod 0755 "$root"
    install -d -m 0755 "$root/usr" "$root/usr/local" "$root/usr/local/bin"
    # a debug build (MOAT_BINARY=target/debug/moat) carries ~100 MB of debug info: not in the image
    objcopy --strip-debug "$bin" "$root/usr/local/bin/moat"; chmod 0555 "$root/usr/local/bin/moat"
    local layer=$WORK/moat-layer.tar; layer_tar "$root" "$layer"; rm -rf "$root"
    MUTATE=(--entrypoint /usr/local/bin/moat --cmd run --user 65532:65532 --workdir /
            --env PATH=/usr/local/bin:/usr/bin:/bin
            -l "org.opencontainers.image.title=moat" -l "org.opencontainers.image.version=$(cargo_version)"
            -l "dev.moat.debian.suite=$MOAT_SUITE")
    make_image "$ref" "$key" "[\"hack/images.sh: Debian $MOAT_SUITE $(tr '\n' ' ' < "$IMG/locks/moat-base.lock")(CA bundle, os-release)\", \"hack/images.sh: /usr/local/bin/moat (cargo build --release --locked)\"]" \
      "$base" "$layer"
    # keep the three newest moat tarballs
    ls -t "$IMG/oci/$(safe "$MOAT_REPO")_"*.oci.tar 2>/dev/null | tail -n +4 | while read -r old; do
      rm -f "$old" "${old%.oci.tar}.key"; done
  fi
  BUILT+=("$ref")
}

pause_binary() {
  if [[ -n ${PAUSE_BIN:-} ]]; then [[ -x $PAUSE_BIN ]] || die "PAUSE_BIN=$PAUSE_BIN is not executable"; echo "$PAUSE_BIN"; return 0; fi
  local f; for f in "$NODE_PAUSE" "$CACHE"/bin/node*/pause; do [[ -x $f ]] && { echo "$f"; return 0; }; done
  # not built by the node helper yet: compile it the same way, at the same path
  local src=$CACHE/go/mod/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c
  if [[ ! -f $src ]]; then
    command -v go >/dev/null || die "go not found (pause.c comes from the k8s.io/kubernetes module)"
    GOMODCACHE=$CACHE/go/mod GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local} \
      with_progress "go mod download k8s.io/kubernetes@$K8S_VERSION" \
      bash -c "cd '$(mktemp -d)' && go mod download k8s.io/kubernetes@$K8S_VERSION" >&2
  fi
  [[ -f $src ]] || die "$src not found"
  command -v gcc >/dev/null || die "gcc not found (apt-get install gcc libc6-dev)"
  mkdir -p "$(dirname "$NODE_PAUSE")"
  gcc -Os -Wall -Werror -static -DVERSION=v3.10-moat -o "$NODE_PAUSE.tmp.$$" "$src" >&2
  mv "$NODE_PAUSE.tmp.$$" "$NODE_PAUSE"
  log "compiled $NODE_PAUSE from $src"
  echo "$NODE_PAUSE"
}
build_pause() {
  local bin key; bin=$(pause_binary)
  key=$(printf '%s %s' "$(sha "$bin")" "$SELF_SHA" | sha)
  if ! up_to_date "$PAUSE_REF" "$key"; then
    workdir
    local root; root=$(mktemp -d "$WORK/root.XXXXXX"); chmod 0755 "$root"
    install -m 0755 "$bin" "$root/pause"
    local layer=$WORK/pause-layer.tar; layer_tar "$root" "$layer"; rm -rf "$root"
    MUTATE=(--entrypoint /pause --user 65535:65535 --workdir / -l "org.opencontainers.image.title=pause")
    make_image "$PAUSE_REF" "$key" "[\"hack/images.sh: /pause ($(basename "$(dirname "$bin")")/pause, static)\"]" "$layer"
  fi
  BUILT+=("$PAUSE_REF")
}

write_index() { # $IMG/index.tsv: ref, digest, OCI tarball — what `load` and `list` read
  local ref rest built=" ${BUILT[*]} " tmp=$IMG/index.tsv.tmp
  : > "$tmp"
  if [[ -s $IMG/index.tsv ]]; then   # a partial build keeps the other entries (not an older moat)
    while IFS=$'\t' read -r ref rest; do
      [[ $built == *" $ref "* || -s $(oci_tar "$ref") ]] || continue
      [[ $built == *" $ref "* ]] && continue
      [[ $ref == "$MOAT_REPO":* && $built == *" $MOAT_REPO:"* ]] && continue
      printf '%s\t%s\n' "$ref" "$rest" >> "$tmp"
    done < "$IMG/index.tsv"
  fi
  for ref in "${BUILT[@]}"; do printf '%s\t%s\t%s\n' "$ref" "$(digest_of "$ref")" "$(oci_tar "$ref")"; done >> "$tmp"
  sort -o "$tmp" "$tmp"; mv "$tmp" "$IMG/index.tsv"
}

build() { # [--refresh] [all|pause|brokers|moat]
  local what=all
  while (($#)); do
    case $1 in --refresh) REFRESH=true;; all|pause|brokers|moat) what=$1;; *) die "unknown build argument $1";; esac
    shift
  done
  mkdir -p "$IMG"
  exec 9>"$IMG/.build.lock"
  flock -w 600 9 || die "another images.sh build holds $IMG/.build.lock"
  local start=$SECONDS
  workdir   # before any $(...): subshells share this work dir, cleaned up on exit
  case $what in
    all) build_pause; build_brokers; build_moat;;
    pause) build_pause;; brokers) build_brokers;; moat) build_moat;;
  esac
  write_index
  log "built ${#BUILT[@]} images in $((SECONDS - start)) s (index: $IMG/index.tsv)"
}

# ----------------------------------------------------------------- load ----
ctr_() { # containerd 2.4 warns about cgroup v1 on every call: drop that line (grep finding
        # nothing else is no error)
  "$CTR" --address "$CONTAINERD_ADDRESS" -n "$CTR_NAMESPACE" "$@" 2> >(grep -v 'msg="DEPRECATION: The support for cgroup v1' >&2 || true)
}
load() {
  [[ -s $IMG/index.tsv ]] || die "nothing built: run $0 build"
  [[ -x $CTR ]] || die "ctr not found at $CTR (set CTR=...; is the node built? hack/local-node.sh)"
  [[ -S $CONTAINERD_ADDRESS ]] || die "no containerd socket at $CONTAINERD_ADDRESS (set CONTAINERD_ADDRESS=...; is the node up?)"
  local have; have=$(ctr_ images ls | awk 'NR > 1 {print $1, $3}') || die "ctr images ls failed"
  local ref digest tar n=0 start=$SECONDS
  while IFS=$'\t' read -r ref digest tar; do
    if grep -qxF "$ref $digest" <<< "$have"; then continue; fi
    # pinned: kubelet's image GC must never delete an image no registry can give back
    ctr_ images import --label io.cri-containerd.pinned=pinned "$tar" >/dev/null ||
      die "ctr images import $tar failed"
    n=$((n + 1)); log "loaded $ref ($digest)"
  done < "$IMG/index.tsv"
  have=$(ctr_ images ls | awk 'NR > 1 {print $1, $3}')
  while IFS=$'\t' read -r ref digest tar; do
    grep -qxF "$ref $digest" <<< "$have" || die "$ref is not in containerd with $digest after the import"
  done < "$IMG/index.tsv"
  log "$n image(s) imported, $(wc -l < "$IMG/index.tsv") present in containerd ($CTR_NAMESPACE) in $((SECONDS - start)) s"
}

# ---------------------------------------------------------------- verify ----
in_root() { # root path -> path on the host, following symlinks inside root
  local root=$1 p=$2 t i
  for ((i = 0; i < 40; i++)); do
    [[ -L $root$p ]] || { echo "$root$p"; return 0; }
    t=$(readlink "$root$p")
    if [[ $t == /* ]]; then p=$t; else p=$(dirname "$p")/$t; fi
  done
  die "symlink loop at $p in $root"
}
unpack_image() { # tar dest — applies the layers in order (whiteouts included)
  local tar=$1 root=$2 x; x=$(mktemp -d "$WORK/x.XXXXXX"); tar -xf "$tar" -C "$x"
  local m; m=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$x/index.json")
  local l; mkdir -p "$root"
  for l in $(python3 -c 'import json,sys; print(" ".join(l["digest"].split(":")[1] for l in json.load(open(sys.argv[1]))["layers"]))' "$x/blobs/sha256/${m#sha256:}"); do
    tar -xzf "$x/blobs/sha256/$l" -C "$root"
    local wh; while read -r wh; do
      [[ -n $wh ]] || continue
      local dir; dir=$(dirname "$wh")
      rm -rf "${dir:?}/$(basename "$wh" | sed 's/^\.wh\.//')" "$wh"
    done < <(find "$root" -name '.wh.*')
  done
  rm -rf "$x"
}
ld_run() { # root binary args... — the rootfs' own loader and libraries, no ld.so.cache
  local root=$1 bin=$2; shift 2
  "$(in_root "$root" /lib64/ld-linux-x86-64.so.2)" --inhibit-cache \
    --library-path "$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu" "$root$bin" "$@"
}
closure_ok() { # root file — every needed library resolves inside root
  local out; out=$("$(in_root "$1" /lib64/ld-linux-x86-64.so.2)" --inhibit-cache --list \
        --library-path "$1/lib/x86_64-linux-gnu:$1/usr/lib/x86_64-linux-gnu" "$1$2" 2>&1) || { echo "$out"; return 1; }
  local bad; bad=$(grep '=>' <<< "$out" | grep -v "=> $1/" || true)
  [[ -z $bad ]] || { echo "$bad"; return 1; }
}
verify() {
  [[ -s $IMG/index.tsv ]] || die "nothing built: run $0 build"
  workdir
  local ref digest tar fail=0 root out
  while IFS=$'\t' read -r ref digest tar; do
    root=$WORK/v-$(safe "$ref"); unpack_image "$tar" "$root"
    case $ref in
      "$BROKEN")
        # From the host the loader falls back to the host's own /lib (and would find its libssl),
        # so check that the library resolves outside the image, and run it in a chroot.
        local outside; outside=$(closure_ok "$root" /usr/sbin/mosquitto || true)
        if [[ -e $root/$BROKEN_REMOVES || $outside != *libssl.so.3* ]]; then log "FAIL $ref: /$BROKEN_REMOVES is still there"; fail=1
        elif ((EUID == 0)); then
          local rc=0; out=$(chroot --userspec=1883:1883 "$root" /usr/sbin/mosquitto -h 2>&1) || rc=$?
          if ((rc == 127)); then log "ok   $ref: broken as intended, in a chroot (rc $rc): $(head -1 <<< "$out")"
          else log "FAIL $ref: mosquitto -h in a chroot: rc $rc: $(head -1 <<< "$out")"; fail=1; fi
        else log "ok   $ref: libssl.so.3 is not in the image ($(xargs <<< "$outside")); not root: chroot check skipped"; fi;;
      moat.local/mosquitto*)
        local want=${ref##*:} f bad=0
        out=$(ld_run "$root" /usr/sbin/mosquitto -h 2>&1 || true)
        local version; version=$(grep -m1 '^mosquitto version' <<< "$out" || true)
        [[ $version == "mosquitto version $want" ]] || { log "FAIL $ref: $(head -2 <<< "$out")"; fail=1; continue; }
        for f in $(cd "$root" && find usr/sbin usr/bin usr/lib/x86_64-linux-gnu -type f \( -perm -u+x -o -name '*.so*' \) | sort); do
          [[ $(head -c 4 "$root/$f" | tail -c 3) == ELF ]] || continue
          closure_ok "$root" "/$f" >/dev/null || { log "FAIL $ref: /$f: $(closure_ok "$root" "/$f" | head -2 | tr '\n' ' ')"; bad=1; }
        done
        if ((EUID == 0)); then
          out=$(chroot --userspec=1883:1883 "$root" /usr/sbin/mosquitto -h 2>&1 || true)
          grep -q "^mosquitto version $want\$" <<< "$out" || { log "FAIL $ref: mosquitto -h in a chroot as 1883: $(head -1 <<< "$out")"; bad=1; }
        fi
        if ((bad)); then fail=1
        else log "ok   $ref: $version (its own loader; also in a chroot as 1883); every ELF file's libraries resolve inside the image"; fi;;
      "$MOAT_REPO":*)
        out=$(ld_run "$root" /usr/local/bin/moat --version 2>&1 || true)
        local shells; shells=$(cd "$root" && ls -d bin/sh usr/bin/* usr/sbin/* bin/bash usr/bin/dpkg 2>/dev/null | head -3 || true)
        if [[ $out != "moat $(cargo_version)" ]]; then log "FAIL $ref: '$out'"; fail=1
        elif [[ -n $shells ]]; then log "FAIL $ref: has $shells"; fail=1
        elif ! closure_ok "$root" /usr/local/bin/moat >/dev/null; then log "FAIL $ref: $(closure_ok "$root" /usr/local/bin/moat)"; fail=1
        else log "ok   $ref: '$out' from the image's own loader and libc; no shell, no package manager"; fi;;
      "$PAUSE_REF")
        out=$("$root/pause" -v 2>&1 || true)
        if [[ $out == pause.c* ]]; then log "ok   $ref: $out"; else log "FAIL $ref: '$out'"; fail=1; fi;;
    esac
    rm -rf "$root"
  done < "$IMG/index.tsv"
  ((fail == 0)) || die "verify failed"
}

case ${1:-} in
  build) shift; build "$@";;
  load) load;;
  list) [[ -s $IMG/index.tsv ]] || die "nothing built: run $0 build"
        if [[ ${2:-} == -l ]]; then cat "$IMG/index.tsv"; else cut -f1 "$IMG/index.tsv"; fi;;
  ref) [[ -s $IMG/index.tsv ]] || die "nothing built: run $0 build"
       case ${2:-} in
         moat) if [[ -n ${MOAT_BINARY:-} ]]; then   # exactly the image of that binary
                 r=$(moat_ref_for "$MOAT_BINARY")
                 cut -f1 "$IMG/index.tsv" | grep -qxF "$r" || die "no image of $MOAT_BINARY ($r): run MOAT_BINARY=$MOAT_BINARY $0 build moat"
               else
                 r=$(cut -f1 "$IMG/index.tsv" | grep "^$MOAT_REPO:" | tail -1)
                 [[ -n $r ]] || die "no moat image in the index: run $0 build"
                 b=${CARGO_TARGET_DIR:-$REPO/target}/release/moat
                 if [[ -x $b && $(moat_ref_for "$b") != "$r" ]]; then log "warning: $b changed since the last build ($(moat_ref_for "$b")): run $0 build"; fi
               fi
               echo "$r";;
         pause) echo "$PAUSE_REF";;
         *) die "usage: $0 ref moat|pause";;
       esac;;
  verify) verify;;
  *) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 2;;
esac
