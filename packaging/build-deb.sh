#!/bin/sh
# Build the Debian package from this checkout and lint it.
#
#   packaging/build-deb.sh [OUTDIR]          (OUTDIR defaults to dist/ in the repo)
#
# Copies the checkout's files (tracked and new, not ignored) to a temporary tree,
# puts packaging/debian there as debian/, runs `dpkg-buildpackage -us -uc -b`,
# leaves dramactl_<version>_all.deb in OUTDIR and runs lintian on it. Nothing is
# written to the checkout but OUTDIR. Exit status: non-zero when the build fails
# or lintian reports an error or a warning that debian/dramactl.lintian-overrides
# does not explain.
#
# Needs (Debian 12): build-essential debhelper dh-python pybuild-plugin-pyproject
# python3-all python3-setuptools python3-click python3-dotenv help2man lintian, and
# for the build-time tests python3-pytest python3-redis python3-pystemd
# (or DEB_BUILD_OPTIONS=nocheck).
# Set KEEP_BUILD=1 to keep the temporary tree and its build.log.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

for tool in dpkg-buildpackage dh lintian help2man; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "build-deb: $tool is missing (apt-get install build-essential debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools help2man lintian)" >&2
        exit 2
    }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dramactl-deb.XXXXXX")
if [ "${KEEP_BUILD:-}" = 1 ]; then
    echo "build-deb: keeping $tmp" >&2
else
    trap 'rm -rf "$tmp"' EXIT INT TERM
fi

version=$(dpkg-parsechangelog -l "$repo/packaging/debian/changelog" -S Version)
upstream=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml" | head -n 1)
case "$version" in
    "$upstream" | "$upstream"-* | "$upstream"+*) ;;
    *)
        echo "build-deb: packaging/debian/changelog says $version, pyproject.toml says $upstream; add a changelog entry (dch -v $upstream)" >&2
        exit 2
        ;;
esac

src="$tmp/dramactl-$upstream"
mkdir -p "$src"
# The checkout's own files only: no venvs, egg-info, caches or earlier builds.
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard) |
        (cd "$repo" && xargs -0 sh -c 'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh) |
        (cd "$repo" && tar --null -T - -cf -) | tar -xf - -C "$src"
else
    tar -C "$repo" --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=.pytest_cache --exclude=build --exclude=dist --exclude=./debian -cf - . | tar -xf - -C "$src"
fi
rm -rf "$src/debian"
cp -r "$repo/packaging/debian" "$src/debian"

echo "build-deb: building dramactl $version in $tmp" >&2
# Debian's interpreters and tools only: no virtualenv, pyenv or /usr/local python
# on PATH, no Python variables of the calling shell.
if ! (cd "$src" && env -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP -u VIRTUAL_ENV -u PYENV_VERSION \
        -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PYTHONDONTWRITEBYTECODE \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b) >"$tmp/build.log" 2>&1; then
    tail -n 60 "$tmp/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed (KEEP_BUILD=1 keeps the full log)" >&2
    exit 1
fi

deb="dramactl_${version}_all.deb"
cp "$tmp/$deb" "$out/$deb"
echo "build-deb: built $out/$deb" >&2

# Errors and warnings fail; info tags are shown, and overridden tags are listed
# with their reasons (O:/N: lines). The verdict is read from the tags because
# lintian 2.116 counts overridden tags for --fail-on when --show-overrides is given.
status=0
PATH=/usr/sbin:/usr/bin:/sbin:/bin lintian --fail-on none --display-info --show-overrides --tag-display-limit 0 \
    "$out/$deb" >"$tmp/lintian.txt" 2>"$tmp/lintian.err" || status=$?
# (lintian's "running with root privileges is not recommended" is not a finding.)
grep -v 'running with root privileges' "$tmp/lintian.err" >&2 || true
if [ -s "$tmp/lintian.txt" ]; then
    sed 's/^/lintian: /' "$tmp/lintian.txt"
fi
errors=$(grep -c '^E: ' "$tmp/lintian.txt" || true)
warnings=$(grep -c '^W: ' "$tmp/lintian.txt" || true)
overridden=$(grep -c '^O: ' "$tmp/lintian.txt" || true)
echo "lintian: $errors errors, $warnings warnings, $overridden overridden (reasons in debian/dramactl.lintian-overrides)"
if [ "$status" -ne 0 ] || [ "$errors" -ne 0 ] || [ "$warnings" -ne 0 ]; then
    echo "build-deb: lintian failed (exit $status)" >&2
    exit 1
fi
echo "$out/$deb"
