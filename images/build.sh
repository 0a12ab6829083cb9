#!/usr/bin/env bash
# Builds the reports-server OCI image with buildah, from scratch: the release binary, the shared
# libraries `ldd` names for it plus glibc's NSS modules (host-name lookups: the database is a DNS
# name in every real install), CA certificates, /etc/passwd, /etc/group and /etc/nsswitch.conf for
# the numeric user 65532, and an empty /tmp and /data. No shell, no package manager.
#
#   images/build.sh                          # cargo build --release, then the image reports-server:<version>
#   images/build.sh --binary PATH            # use an already built binary
#   images/build.sh --tag NAME:TAG --oci-archive out.tar
#   images/build.sh --storage-root DIR       # buildah storage of its own (tests use a throwaway one)
#
# The libraries are copied from this machine, the one that linked the binary, so their versions are
# the ones it was built against; each file is checked to belong to an installed Debian package whose
# files `dpkg --verify` finds unmodified. Needs buildah (Debian: apt-get install buildah); works as
# root without a daemon (--storage-driver vfs --isolation chroot).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
binary=""
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)
tag="reports-server:${version}"
archive=""
storage=()
strip_binary=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --oci-archive) archive=$2; shift 2 ;;
    --storage-root) storage=(--root "$2/root" --runroot "$2/run"); shift 2 ;;
    --no-strip) strip_binary=0; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
command -v buildah >/dev/null || { echo "buildah is required (Debian: apt-get install buildah)" >&2; exit 1; }

if [ -z "$binary" ]; then
  (cd "$root" && cargo build --release --locked -p reports-server)
  binary="$root/target/release/reports-server"
fi
[ -x "$binary" ] || { echo "no executable at $binary" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$work/data"
chmod 1777 "$rootfs/tmp"

install -m 0755 "$binary" "$rootfs/reports-server"
if [ "$strip_binary" = 1 ]; then strip --strip-debug "$rootfs/reports-server"; fi

# Every library the dynamic linker will load, by the path ldd resolves, plus the NSS modules that
# glibc loads at run time by name (files for /etc/hosts, dns for resolv.conf).
libdir=$(dirname "$(ldd "$binary" | awk '$1 ~ /^libc\.so/ { print $3 }')")
mapfile -t libs < <(
  ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
  for nss in libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
    [ -e "$libdir/$nss" ] && echo "$libdir/$nss"
  done
)
packages=()
for lib in "${libs[@]}"; do
  real=$(readlink -f "$lib")
  owner=$(dpkg -S "$real" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || dpkg -S "${real#/usr}" 2>/dev/null) \
    || { echo "$lib belongs to no Debian package" >&2; exit 1; }
  packages+=("${owner%%:*}")
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

# CA certificates: the bundle update-ca-certificates would build from Debian's Mozilla set.
if [ ! -d /usr/share/ca-certificates/mozilla ]; then
  (cd "$work" && apt-get download -q ca-certificates >/dev/null && dpkg-deb -x ca-certificates_*.deb "$work/ca")
  cadir="$work/ca/usr/share/ca-certificates/mozilla"
else
  cadir=/usr/share/ca-certificates/mozilla
  packages+=(ca-certificates)
fi
cat "$cadir"/*.crt > "$rootfs/etc/ssl/certs/ca-certificates.crt"

mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
if ! modified=$(dpkg --verify "${packages[@]}" 2>&1) || [ -n "$modified" ]; then
  echo "installed package files differ from their packages: $modified" >&2
  exit 1
fi
for pkg in "${packages[@]}"; do
  if [ -f "/usr/share/doc/$pkg/copyright" ]; then
    mkdir -p "$rootfs/usr/share/doc/$pkg"
    cp "/usr/share/doc/$pkg/copyright" "$rootfs/usr/share/doc/$pkg/copyright"
  fi
done

printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
# Runtimes mount their own /etc/hosts over this; it makes `localhost` resolve without one.
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$rootfs/etc/hosts"

revision=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
buildah "${storage[@]}" --storage-driver vfs bud --quiet --isolation chroot \
  --label org.opencontainers.image.title=reports-server \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.revision="$revision" \
  --label org.opencontainers.image.description="Kubernetes aggregated API server for policy reports" \
  -f "$root/images/Containerfile" -t "$tag" "$work"
echo "built $tag from $binary (packages: ${packages[*]})"
if [ -n "$archive" ]; then
  buildah "${storage[@]}" --storage-driver vfs push "$tag" "oci-archive:$archive:$tag"
  echo "wrote $archive"
fi
