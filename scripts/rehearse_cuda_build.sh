#!/usr/bin/env bash
# A rehearsal of the image's CUDA builds on a machine with no GPU and no Docker: compiles
# nvdiffrast, gsplat and pytorch3d at the commits the image installs, for each image's
# TORCH_CUDA_ARCH_LIST (read from the Dockerfile), against each image's torch (from PyPI),
# checks that each compiled library holds SASS for every architecture and PTX for the +PTX
# one (cuobjdump), then runs scripts/check_cuda_extensions.py. Not in CI: each extension
# takes 10-40 minutes per stack on two cores.
#
#   scripts/rehearse_cuda_build.sh [WORK_DIR]      (default /work/rehearsal, outside the repo)
#   STACKS="default blackwell"  EXTENSIONS="nvdiffrast gsplat pytorch3d"  MAX_JOBS=2
#   SOURCE_MIRROR=/path   clone <owner>+<name>/repo from there instead of GitHub
#   CUDA_HOME_default=/usr/local/cuda-12.1  CUDA_HOME_blackwell=/usr/local/cuda-12.8
#                         a real toolkit per stack instead of Debian's
#
# The toolkit, unless given: Debian's nvidia-cuda-toolkit 12.4 (trixie, unpacked with
# `dpkg -x`, no root needed beyond apt's download). PyPI's nvidia-cuda-nvcc-cu12 wheels hold
# only ptxas, not nvcc; CUDA 13's nvcc is refused by torch built with CUDA 12 (major
# versions must match). CUDA 12.4 cannot emit sm_100/sm_120 (12.8 can): the architectures a
# toolkit lacks are left out, named, and the rehearsal then ends with status 3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/work/rehearsal}
STACKS=${STACKS:-default blackwell}
EXTENSIONS=${EXTENSIONS:-nvdiffrast gsplat pytorch3d}
export MAX_JOBS=${MAX_JOBS:-2}
PYTHON=${PYTHON:-python3}
DEBIAN_CUDA=12.4.131~12.4.1-2
DEBIAN_CUDA_DEV=12.4.127~12.4.1-2

# stack -> the image's torch (PyPI's 2.5.1 is built with CUDA 12.4, the image's 2.5.1+cu121
# with 12.1: the same sources and headers; 2.8.0 is the Blackwell image's, CUDA 12.8).
torch_of() { case $1 in default) echo 2.5.1 ;; blackwell) echo 2.8.0 ;; esac; }

# Debian's CUDA 12.4 toolkit under $WORK/debian-cuda, downloaded with a private apt setup.
debian_toolkit() {
    local root="$WORK/debian-cuda" apt="$WORK/apt"
    [ -x "$root/usr/lib/nvidia-cuda-toolkit/bin/nvcc" ] && { echo "$root"; return; }
    mkdir -p "$apt/lists/partial" "$apt/cache" "$apt/debs" "$root"
    echo "deb http://deb.debian.org/debian trixie main contrib non-free" > "$apt/sources.list"
    cat > "$apt/apt.conf" <<CONF
Dir::Etc::SourceList "$apt/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::State::Lists "$apt/lists";
Dir::Cache "$apt/cache";
APT::Architecture "amd64";
CONF
    APT_CONFIG="$apt/apt.conf" apt-get update -qq >&2
    (cd "$apt/debs" && APT_CONFIG="$apt/apt.conf" apt-get download -qq \
        "nvidia-cuda-toolkit=$DEBIAN_CUDA" "libnvvm4=$DEBIAN_CUDA" \
        "nvidia-cuda-dev=$DEBIAN_CUDA_DEV" "libcudart12=$DEBIAN_CUDA_DEV" \
        libcu++-dev/trixie libcub-dev/trixie libthrust-dev/trixie >&2)
    for deb in "$apt/debs"/*.deb; do dpkg -x "$deb" "$root"; done
    echo "$root"
}

# A CUDA_HOME (bin, include, lib64) over Debian's unpacked toolkit, whose nvcc.profile
# names absolute /usr paths: nvcc reads the profile beside its binary, so both are copied.
assemble_cuda_home() {
    local debian=$1 home=$2 tool
    rm -rf "$home" && mkdir -p "$home/bin"
    cp "$debian/usr/lib/nvidia-cuda-toolkit/bin/nvcc" "$home/bin/"
    for tool in "$debian"/usr/bin/*; do
        [ "$(basename "$tool")" = nvcc ] || ln -s "$tool" "$home/bin/"
    done
    ln -s "$debian/usr/lib/nvidia-cuda-toolkit/bin/cicc" "$home/bin/"
    ln -s "$debian/usr/lib/nvidia-cuda-toolkit/bin/crt" "$home/bin/"
    ln -s "$debian/usr/include" "$home/include"
    ln -s "$debian/usr/lib/x86_64-linux-gnu" "$home/lib64"
    cat > "$home/bin/nvcc.profile" <<PROFILE
NVVMIR_LIBRARY_DIR = $debian/usr/lib/nvidia-cuda-toolkit/libdevice
PATH += $home/bin:
INCLUDES += "-I$home/include" \$(_SPACE_)
LIBRARIES =+ \$(_SPACE_) "-L$home/lib64/stubs" "-L$home/lib64"
PROFILE
}

# The entries of an arch list (8.6, 9.0+PTX) this nvcc can compile; the others go to stderr.
supported_archs() {
    local arch_list=$1 known arch kept=()
    known=$("$CUDA_HOME/bin/nvcc" --list-gpu-arch)
    for arch in ${arch_list//;/ }; do
        local number=${arch%+PTX}
        if grep -qx "compute_${number/./}" <<<"$known"; then kept+=("$arch")
        else echo "$arch" >&2; fi
    done
    local IFS=';'; echo "${kept[*]}"
}

# The value of `name` (ENV or ARG) in the Dockerfile stage `stage`.
dockerfile_value() {
    awk -v stage="$1" -v name="$2" '
        /^FROM / { inside = ($NF == stage) }
        inside && match($0, name "=\"?[^\" ]+") {
            value = substr($0, RSTART + length(name) + 1, RLENGTH - length(name) - 1)
            gsub(/"/, "", value); print value; exit
        }' "$ROOT/Dockerfile"
}

# owner/name at commit, checked out under $WORK/src/name-commit. A mirror may lack the
# largest blobs (sample data, images): then every file it has is written out instead.
checkout() {
    local repo=$1 commit=$2 folder
    folder="$WORK/src/${repo#*/}-${commit:0:10}"
    if [ ! -d "$folder" ]; then
        local url="https://github.com/$repo.git" tmp="$folder.tmp"
        [ -n "${SOURCE_MIRROR:-}" ] && url="$SOURCE_MIRROR/${repo/\//+}/repo"
        rm -rf "$tmp" && git clone -q --no-checkout "$url" "$tmp"
        if ! git -C "$tmp" -c advice.detachedHead=false checkout -q "$commit" 2>/dev/null; then
            git -C "$tmp" update-ref --no-deref HEAD "$commit"
            git -C "$tmp" ls-tree -r "$commit" | while read -r mode type object path; do
                if [ "$type" != blob ] || ! git -C "$tmp" cat-file -e "$object" 2>/dev/null; then continue; fi
                mkdir -p "$tmp/$(dirname "$path")"
                git -C "$tmp" cat-file blob "$object" > "$tmp/$path"
                [ "$mode" != 100755 ] || chmod +x "$tmp/$path"
            done
        fi
        mv "$tmp" "$folder"
    fi
    echo "$folder"
}

# gsplat's one submodule, glm, at the commit gsplat records (SOURCE_MIRROR has no submodules).
gsplat_glm() {
    local folder=$1 glm_commit glm
    glm_commit=$(git -C "$folder" ls-tree HEAD gsplat/cuda/csrc/third_party/glm | awk '{print $3}')
    glm=$(checkout g-truc/glm "$glm_commit")
    rmdir "$folder/gsplat/cuda/csrc/third_party/glm" 2>/dev/null || true
    [ -e "$folder/gsplat/cuda/csrc/third_party/glm/glm" ] \
        || cp -r "$glm" "$folder/gsplat/cuda/csrc/third_party/glm"
}

# The commit of `package` in SAM 3D Objects' requirements at the Dockerfile's commit (pip's
# `name @ git+URL@commit`), read from a clone without a work tree (its images are large).
upstream_commit() {
    local clone="$WORK/src/sam-3d-objects.git" url=https://github.com/facebookresearch/sam-3d-objects.git
    [ -n "${SOURCE_MIRROR:-}" ] && url="$SOURCE_MIRROR/facebookresearch+sam-3d-objects/repo"
    [ -d "$clone" ] || git clone -q --bare "$url" "$clone"
    git -C "$clone" show "$SAM3D_COMMIT:requirements.inference.txt" \
        "$SAM3D_COMMIT:requirements.p3d.txt" | grep "^$1 @ git+" | sed 's/.*@//'
}

# The compiled library, as scripts/check_cuda_extensions.py finds it.
library_of() {
    case $1 in nvdiffrast) echo '_nvdiffrast_c*.so' ;; gsplat) echo 'gsplat/csrc*.so' ;;
               pytorch3d) echo 'pytorch3d/_C*.so' ;; esac
}

# Every architecture of the arch list has SASS in the library, and +PTX has PTX.
check_library() {
    local library=$1 arch_list=$2 elf ptx status=0
    [ -f "$library" ] || { echo "  no library $library"; return 1; }
    elf=$("$CUDA_HOME/bin/cuobjdump" --list-elf "$library" | grep -o 'sm_[0-9]*' | sort -u | tr '\n' ' ')
    ptx=$("$CUDA_HOME/bin/cuobjdump" --list-ptx "$library" | grep -o 'sm_[0-9]*' | sort -u | tr '\n' ' ')
    echo "  $(basename "$library"): SASS ${elf:-none}| PTX ${ptx:-none}"
    for arch in ${arch_list//;/ }; do
        local sm="sm_${arch%+PTX}"; sm=${sm/./}
        grep -qw "$sm" <<<"$elf" || { echo "  MISSING SASS for $sm"; status=1; }
        if [[ $arch == *+PTX ]]; then
            grep -qw "$sm" <<<"$ptx" || { echo "  MISSING PTX for $sm"; status=1; }
        fi
    done
    return $status
}

mkdir -p "$WORK/src"
SAM3D_COMMIT=$(dockerfile_value server SAM3D_COMMIT)
nvdiffrast_commit=$(dockerfile_value server NVDIFFRAST_COMMIT)
debian=""
failures=0
left_out=""

for stack in $STACKS; do
    arch_list=$(dockerfile_value "cuda-$stack" TORCH_CUDA_ARCH_LIST)
    venv="$WORK/$stack"
    echo "== $stack: torch $(torch_of "$stack"), the Dockerfile's TORCH_CUDA_ARCH_LIST=$arch_list"
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q "torch==$(torch_of "$stack")" numpy ninja==1.11.1.4 setuptools wheel
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    given="CUDA_HOME_$stack"
    if [ -n "${!given:-}" ]; then
        export CUDA_HOME=${!given}
    else
        [ -n "$debian" ] || debian=$(debian_toolkit)
        export CUDA_HOME="$venv/cuda"
        assemble_cuda_home "$debian" "$CUDA_HOME"
    fi
    echo "   nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -1)"
    built_list=$(supported_archs "$arch_list" 2>"$venv/unsupported")
    if [ -s "$venv/unsupported" ]; then
        missing_archs=$(tr '\n' ' ' < "$venv/unsupported")
        echo "   NOT REHEARSED: $missing_archs(this nvcc cannot compile them); building $built_list"
        left_out="$left_out $stack:[ $missing_archs]"
    fi
    export TORCH_CUDA_ARCH_LIST="$built_list" FORCE_CUDA=1
    for extension in $EXTENSIONS; do
        case $extension in
            nvdiffrast) source=$(checkout NVlabs/nvdiffrast "$nvdiffrast_commit") ;;
            gsplat) source=$(checkout nerfstudio-project/gsplat "$(upstream_commit gsplat)")
                    gsplat_glm "$source" ;;
            pytorch3d) source=$(checkout facebookresearch/pytorch3d "$(upstream_commit pytorch3d)") ;;
            *) echo "unknown extension $extension"; exit 2 ;;
        esac
        # each stack builds in its own copy: stacks can then run at once (STACKS=one each)
        rm -rf "$venv/src/$extension" && mkdir -p "$venv/src" && cp -r "$source" "$venv/src/$extension"
        start=$(date +%s)
        if (cd "$venv/src/$extension" && PATH="$venv/bin:$CUDA_HOME/bin:$PATH" \
                "$venv/bin/pip" install -v --no-build-isolation --no-deps . \
                > "$venv/$extension.log" 2>&1); then
            result=built
        else
            result=FAILED; failures=$((failures + 1)); tail -20 "$venv/$extension.log"
        fi
        minutes=$(( ($(date +%s) - start + 30) / 60 ))
        echo "-- $stack $extension ($built_list): $result in $minutes min (log $venv/$extension.log)"
        [ "$result" = built ] || continue
        for library in "$site"/$(library_of "$extension"); do
            check_library "$library" "$built_list" || failures=$((failures + 1))
        done
    done
    (cd "$ROOT" && "$venv/bin/python" scripts/check_cuda_extensions.py) || true
done

echo "== rehearsal done: $failures failure(s)${left_out:+; architectures not rehearsed:$left_out}"
[ "$failures" -eq 0 ] || exit 1
[ -z "$left_out" ] || exit 3
