#!/usr/bin/env bash
# Run the original BlazeFL 2.0.3 test suite against this package, with import edits only.
#
# Downloads the original's sdist from PyPI (or takes BLAZEFL_SDIST=path/to/blazefl-2.0.3.tar.gz
# when offline), unpacks it into a temporary folder, removes its own src/ so that `blazefl`
# resolves to the installed package (this one), rewrites the imports that moved, runs its
# tests and prints how many passed. Run it with the project's environment active:
#
#   . .venv/bin/activate && bash benchmarks/original_suite.sh
#
# Exit status: 0 when at least MIN_PASSED (default 38) tests passed.
set -euo pipefail

VERSION="${BLAZEFL_ORIGINAL_VERSION:-2.0.3}"
MIN_PASSED="${MIN_PASSED:-38}"
PYTHON="${PYTHON:-python}"

work="$(mktemp -d "${TMPDIR:-/tmp}/blazefl-original-XXXXXX")"
trap 'rm -rf "$work"' EXIT

if [[ -n "${BLAZEFL_SDIST:-}" ]]; then
    sdist="$BLAZEFL_SDIST"
else
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --ignore-requires-python \
        "blazefl==$VERSION" -d "$work/download"
    sdist="$(ls "$work"/download/blazefl-*.tar.gz)"
fi
tar -xzf "$sdist" -C "$work"
suite="$(ls -d "$work"/blazefl-*/)"
rm -rf "$suite/src"

# the only edits: the original's tests import its source tree as `src.blazefl`, and two
# modules of its core whose names are re-exported by `blazefl.core` here
find "$suite/tests" -name '*.py' -exec sed -i \
    -e 's/from src\.blazefl/from blazefl/g' \
    -e 's/import src\.blazefl/import blazefl/g' \
    -e 's/blazefl\.core\.client_trainer/blazefl.core/g' \
    -e 's/blazefl\.core\.utils/blazefl.core/g' {} +

cd "$suite"
set +e
"$PYTHON" -m pytest -q -p no:cacheprovider -rfEs tests 2>&1 | tee "$work/pytest.log"
set -e
# the summary line, e.g. "40 passed, 2 failed, 1 skipped in 55.87s"
summary="$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|errors?)' "$work/pytest.log" | tail -1)"
count() { grep -Eo "[0-9]+ $1" <<<"$summary" | grep -Eo '[0-9]+' || echo 0; }
passed="$(count passed)"
total=$(( passed + $(count failed) + $(count skipped) + $(count 'errors?') ))
echo "original BlazeFL $VERSION suite against this package: $passed of $total passed"
[[ "$passed" -ge "$MIN_PASSED" ]]
