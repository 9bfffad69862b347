# Shared helpers for the scripts (sourced, not run).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Cargo's target directory lives outside the clone so fresh clones reuse the RocksDB build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/foreshard/target}"
# The binary the scripts run: the one the caller names, else the release build.
FORESHARD="${FORESHARD:-$CARGO_TARGET_DIR/release/foreshard}"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ensure_pkgs PKG ...: installs the Debian packages that are not installed yet.
ensure_pkgs() {
    local missing=() pkg
    for pkg in "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        [[ $(id -u) -eq 0 ]] || die "need root to install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
            { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
    fi
}

# What building and mounting need on a fresh Debian machine.
ensure_build_deps() {
    # protobuf-compiler: etcd-client (crates/cluster) runs protoc in its build script
    ensure_pkgs fuse3 libclang-dev clang pkg-config e2fsprogs mount protobuf-compiler
    command -v cargo >/dev/null || die "cargo not found (the Rust toolchain is required)"
    [[ -e /dev/fuse ]] || modprobe fuse 2>/dev/null || true
}

# enable_fuse_uring: lets FUSE daemons that ask for it take requests over io_uring, one queue
# per CPU (Linux 6.14+; off by default in the kernel). foreshard mounts use it when it is on
# (`foreshard mount --io-uring off` declines); daemons that do not ask, like mergerfs, are
# not affected.
enable_fuse_uring() {
    local p=/sys/module/fuse/parameters/enable_uring
    if [[ ! -e $p ]]; then
        say "this kernel has no FUSE over io_uring: mounts use /dev/fuse"
    elif [[ $(cat "$p") == Y ]]; then
        :
    elif [[ $(id -u) -eq 0 ]] && echo Y >"$p" 2>/dev/null; then
        say "enabled FUSE over io_uring ($p = Y)"
    else
        say "cannot enable FUSE over io_uring ($p): mounts use /dev/fuse"
    fi
}

build() {
    say "building (target dir $CARGO_TARGET_DIR; a first build compiles RocksDB, ~15 min on 2 cores)"
    (cd "$ROOT" && cargo build --release --locked) || die "build failed"
}

# run_harness SUBCOMMAND ARGS...: builds foreshard-bench (crates/bench; seconds, no RocksDB)
# and runs it; the benchmark scripts are entry points to it.
run_harness() {
    (cd "$ROOT" && cargo build --release --locked -q -p foreshard-bench) || die "cannot build foreshard-bench"
    FORESHARD_REPO=$ROOT exec "$CARGO_TARGET_DIR/release/foreshard-bench" "$@"
}

# mkdisks DIR N SIZE: N backing disks under DIR: loop-mounted ext4 images when loop devices
# work, else plain directories. Prints the disk directories.
mkdisks() {
    local dir=$1 n=$2 size=$3 i img d
    mkdir -p "$dir"
    for ((i = 0; i < n; i++)); do
        d="$dir/disk$i"
        img="$dir/disk$i.img"
        mkdir -p "$d"
        if ! mountpoint -q "$d"; then
            if truncate -s "$size" "$img" && mkfs.ext4 -q -F "$img" >/dev/null 2>&1 &&
                mount -o loop "$img" "$d" 2>/dev/null; then
                :
            else
                rm -f "$img"
                echo "note: loop devices unavailable; $d is a plain directory" >&2
            fi
        fi
        echo "$d"
    done
}
