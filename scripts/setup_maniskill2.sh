#!/usr/bin/env bash
# Set up the ManiSkill2 suite (lift-cube, pick-cube, stack-cube, pick-ycb, turn-faucet) in its
# own virtual environment, on a Debian 12 (bookworm) machine with or without a GPU.
#
#   sudo scripts/setup_maniskill2.sh          # once (idempotent: run it again at will)
#   source .vulkan/env.sh                     # in every shell that runs ManiSkill2
#   .venv-ms2/bin/python -m pytest tests/test_maniskill2.py
#
# Why it is separate: ManiSkill2 0.5.3 pins numpy<1.24, which the other suites' packages do
# not accept, and its simulator SAPIEN 2.2.2 needs a Vulkan device even for state
# observations. Without a GPU that device is lavapipe, Mesa's software Vulkan driver, but
# bookworm's lavapipe (Mesa 22.3) lacks a feature SAPIEN needs, so the lavapipe of
# bookworm-backports' Mesa 25 is unpacked into a local folder (the system's Mesa GL/EGL
# packages, which MuJoCo's EGL rendering uses, are not touched), and a tiny Vulkan layer
# built here removes the one device extension (VK_KHR_external_semaphore_fd) that SAPIEN asks
# for and lavapipe does not have.
#
# Steps (each is timed; from scratch on 2 cores ~2 minutes: apt 7 s, lavapipe 2 s, venv 110 s
# with an empty pip cache, check 5 s; a second run takes ~20 s):
#   1 apt      bookworm-backports source; libvulkan1 (loader), libvulkan-dev (headers),
#              vulkan-tools (vulkaninfo), gcc, and the libraries lavapipe links to; nothing
#              already installed is upgraded (--no-upgrade), no Mesa package is installed
#   2 lavapipe apt-get download + dpkg -x of backports' mesa-vulkan-drivers into .vulkan/,
#              and an ICD file .vulkan/icd/lvp_icd.json pointing at its libvulkan_lvp.so
#   3 layer    gcc of conda_envs/vulkan_layer/strip_semaphore_fd.c into .vulkan/layer/
#   4 env      .vulkan/env.sh with the variables to export
#   5 venv     .venv-ms2 with torch==2.13.0 first, then pip install -e '.[maniskill2,test]'
#   6 check    vulkaninfo sees lavapipe; mbdpo's lift-cube env makes and steps
#
# Options (environment variables): MS2_VENV (default <repo>/.venv-ms2), MS2_VULKAN_DIR
# (default <repo>/.vulkan), PYTHON (default python3, 3.11), MESA_VULKAN_VERSION (default
# 25.0.7-2~bpo12+1), SKIP_APT=1 (steps 1-2 without apt-get install/update: the packages must
# be there already), SKIP_VENV=1 (no step 5), SKIP_CHECK=1 (no step 6).
# On a machine with an NVIDIA GPU and its driver, steps 2-4 are not needed (harmless): SAPIEN
# uses the NVIDIA Vulkan driver; do not source .vulkan/env.sh there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MS2_VENV:-$ROOT/.venv-ms2}"
VKDIR="${MS2_VULKAN_DIR:-$ROOT/.vulkan}"
PYTHON="${PYTHON:-python3}"
MESA_VERSION="${MESA_VULKAN_VERSION:-25.0.7-2~bpo12+1}"
LAYER_NAME="VK_LAYER_MBDPO_strip_semaphore_fd"
LAYER_SRC="$ROOT/conda_envs/vulkan_layer"
TORCH_SPEC="torch==2.13.0"

# Libraries libvulkan_lvp.so links to (all in bookworm main, none of them a Mesa package).
LVP_DEPS=(libllvm15 libdrm2 libelf1 libexpat1 libwayland-client0 libx11-xcb1 libxcb-dri3-0
          libxcb-present0 libxcb-randr0 libxcb-shm0 libxcb-sync1 libxcb-xfixes0 libxcb1
          libxshmfence1 libzstd1 zlib1g)

T_START=$SECONDS
declare -a TIMES=()
step() { STEP_NAME="$1"; STEP_T0=$SECONDS; echo; echo "== [$STEP_NAME] $2"; }
done_step() {
    local dt=$((SECONDS - STEP_T0))
    TIMES+=("$(printf '%-9s %4ds' "$STEP_NAME" "$dt")")
    echo "== [$STEP_NAME] done in ${dt}s"
}
die() { echo "setup_maniskill2: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "this step needs root (apt-get): run the script as root or install sudo"; fi
}

# ------------------------------------------------------------------------------ 1 apt
step apt "Debian packages: Vulkan loader/headers/tools, gcc, lavapipe's libraries"
if ! grep -qs "^ID=debian" /etc/os-release || ! grep -qs 'VERSION_CODENAME=bookworm' /etc/os-release; then
    echo "warning: this script is written for Debian 12 (bookworm); going on anyway"
fi
BPO_FILE=/etc/apt/sources.list.d/bookworm-backports.sources
if [ "${SKIP_APT:-0}" != 1 ]; then
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "adding $BPO_FILE (backports have priority 100: nothing is upgraded from there)"
        as_root tee "$BPO_FILE" >/dev/null <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        as_root apt-get update -q
    elif ! apt-cache show "mesa-vulkan-drivers=$MESA_VERSION" >/dev/null 2>&1; then
        as_root apt-get update -q
    fi
    PKGS=(libvulkan1 libvulkan-dev vulkan-tools gcc libc6-dev "${LVP_DEPS[@]}")
    "$PYTHON" -c "import venv, ensurepip" 2>/dev/null || PKGS+=(python3-venv)
    MISSING=()
    for p in "${PKGS[@]}"; do
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || MISSING+=("$p")
    done
    if [ ${#MISSING[@]} -gt 0 ]; then
        echo "installing: ${MISSING[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends --no-upgrade "${MISSING[@]}"
    else
        echo "all present: ${PKGS[*]}"
    fi
fi
[ -f /usr/include/vulkan/vk_layer.h ] || die "no /usr/include/vulkan/vk_layer.h: install libvulkan-dev"
[[ "$(ldconfig -p)" == *"libvulkan.so.1 "* ]] || die "no libvulkan.so.1: install libvulkan1"
done_step

# ------------------------------------------------------------------------------ 2 lavapipe
step lavapipe "lavapipe (mesa-vulkan-drivers $MESA_VERSION) unpacked into $VKDIR"
mkdir -p "$VKDIR/debs" "$VKDIR/icd"
# Backports replace old versions as they go: if the pinned one is gone, take the newest
# backports version on offer (any Mesa >= 25 has what SAPIEN needs).
if ! ls "$VKDIR"/debs/mesa-vulkan-drivers_"${MESA_VERSION//:/%3a}"_*.deb >/dev/null 2>&1 \
        && ! apt-cache show "mesa-vulkan-drivers=$MESA_VERSION" >/dev/null 2>&1; then
    NEWEST="$(apt-cache madison mesa-vulkan-drivers | awk -F'|' '/backports/ {gsub(/ /, "", $2); print $2; exit}')"
    [ -n "$NEWEST" ] || die "no mesa-vulkan-drivers in bookworm-backports (is it in the apt sources and 'apt-get update' done?)"
    echo "mesa-vulkan-drivers=$MESA_VERSION is no longer offered: using $NEWEST"
    MESA_VERSION="$NEWEST"
fi
DEB="$VKDIR/debs/mesa-vulkan-drivers_${MESA_VERSION//:/%3a}_amd64.deb"
if [ ! -s "$DEB" ]; then
    # apt-get download runs as the calling user; _apt cannot write into a root-owned dir
    # (a harmless warning), so download in a temporary dir and move.
    TMPD="$(mktemp -d)"
    (cd "$TMPD" && apt-get download -q "mesa-vulkan-drivers=$MESA_VERSION") \
        || die "cannot download mesa-vulkan-drivers=$MESA_VERSION (is bookworm-backports in the apt sources and 'apt-get update' done?)"
    mv "$TMPD"/mesa-vulkan-drivers_*.deb "$DEB"
    rm -rf "$TMPD"
fi
if [ ! -f "$VKDIR/root/.version" ] || [ "$(cat "$VKDIR/root/.version")" != "$MESA_VERSION" ]; then
    rm -rf "$VKDIR/root"
    dpkg -x "$DEB" "$VKDIR/root"
    echo "$MESA_VERSION" > "$VKDIR/root/.version"
fi
LVP="$(find "$VKDIR/root/usr/lib" -name libvulkan_lvp.so | head -n1)"
[ -n "$LVP" ] || die "no libvulkan_lvp.so in $DEB"
# Every library and symbol lavapipe needs must resolve against the system's libraries.
if UNRESOLVED="$(ldd -r "$LVP" 2>&1 | grep -E 'not found|undefined symbol')"; then
    die "lavapipe ($LVP) does not load: $UNRESOLVED"
fi
# Mesa's own ICD file, with the library's absolute path in the local folder.
SRC_ICD="$(find "$VKDIR/root/usr/share/vulkan/icd.d" -name 'lvp_icd*.json' | head -n1)"
[ -n "$SRC_ICD" ] || die "no lvp_icd.json in $DEB"
sed -E "s|\"library_path\": *\"[^\"]*\"|\"library_path\": \"$LVP\"|" "$SRC_ICD" \
    > "$VKDIR/icd/lvp_icd.json"
echo "ICD: $VKDIR/icd/lvp_icd.json -> $LVP"
done_step

# ------------------------------------------------------------------------------ 3 layer
step layer "Vulkan layer $LAYER_NAME (removes VK_KHR_external_semaphore_fd from vkCreateDevice)"
mkdir -p "$VKDIR/layer"
gcc -shared -fPIC -O2 -Wall -Wextra -fvisibility=hidden \
    -o "$VKDIR/layer/libVkLayer_MBDPO_strip_semaphore_fd.so" "$LAYER_SRC/strip_semaphore_fd.c"
cp "$LAYER_SRC/VkLayer_MBDPO_strip_semaphore_fd.json" "$VKDIR/layer/"
echo "layer: $VKDIR/layer/"
done_step

# ------------------------------------------------------------------------------ 4 env
step env "environment file $VKDIR/env.sh"
cat > "$VKDIR/env.sh" <<EOF
# Software Vulkan (lavapipe) for ManiSkill2/SAPIEN, written by scripts/setup_maniskill2.sh.
# Source it before running ManiSkill2 on a machine without a GPU: . $VKDIR/env.sh
export VK_ICD_FILENAMES="$VKDIR/icd/lvp_icd.json"   # loaders before 1.3.207
export VK_DRIVER_FILES="$VKDIR/icd/lvp_icd.json"    # newer loaders
export VK_LAYER_PATH="$VKDIR/layer"
export VK_INSTANCE_LAYERS="$LAYER_NAME"
EOF
cat "$VKDIR/env.sh"
echo "(LD_LIBRARY_PATH is not needed: the ICD file names lavapipe by its absolute path and"
echo " the Vulkan loader is the system's libvulkan1)"
# shellcheck disable=SC1091
. "$VKDIR/env.sh"
done_step

# ------------------------------------------------------------------------------ 5 venv
if [ "${SKIP_VENV:-0}" != 1 ]; then
    step venv "virtual environment $VENV"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
    # torch first and alone: torch==2.13.0 is a local CPU build; other specs pull CUDA wheels.
    if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
        "${PIP[@]}" install -q "$TORCH_SPEC"
    fi
    "${PIP[@]}" install -q -e "$ROOT[maniskill2,test]" "$TORCH_SPEC"
    "${PIP[@]}" check || die "pip check failed in $VENV"
    "$VENV/bin/python" -c "from importlib.metadata import version as v; print(' | '.join(f'{p} {v(p)}' for p in ('numpy', 'torch', 'mani-skill2', 'sapien', 'gymnasium', 'setuptools')))"
    done_step
fi

# ------------------------------------------------------------------------------ 6 check
if [ "${SKIP_CHECK:-0}" != 1 ]; then
    step check "vulkaninfo sees lavapipe; mbdpo lift-cube (LiftCube-v0) makes and steps"
    VKINFO="$(vulkaninfo --summary 2>&1 || true)"
    grep -E "deviceName|driverInfo" <<<"$VKINFO" \
        || die "vulkaninfo sees no device with $VKDIR/env.sh: $(tail -n 3 <<<"$VKINFO")"
    if [ -x "$VENV/bin/python" ]; then
        (cd /tmp && "$VENV/bin/python" - <<'EOF'
import time
t0 = time.time()
from mbdpo.envs import maniskill2
from mbdpo.tasks import get_task
maniskill2.check_vulkan()                # one clear sentence if SAPIEN has no usable device
env = maniskill2.make(get_task("lift-cube"), seed=0)
obs, _ = env.reset()
t1 = time.time()
for _ in range(100):
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
t2 = time.time()
print(f"lift-cube (LiftCube-v0): obs {obs.shape}, action {env.action_space.shape}, make+reset "
      f"{t1 - t0:.1f}s, {1000 * (t2 - t1) / 100:.1f} ms per agent step (2 env steps), "
      f"truncated after 100: {truncated}")
EOF
        )
    fi
    done_step
fi

echo
echo "== times"
printf '   %s\n' "${TIMES[@]}"
echo "   total     $((SECONDS - T_START))s"
echo
echo "Done. In each shell: source $VKDIR/env.sh   (venv: $VENV)"
