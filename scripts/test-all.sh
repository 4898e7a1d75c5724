#!/usr/bin/env bash
# The whole test suite: unit tests, then integration tests against the real
# kernel and real daemons in network namespaces the tests create. Root only.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "test-all: run as root (the tests create network namespaces)" >&2; exit 1; fi
bash scripts/setup.sh
mkdir -p .cache
status=0
# Tests are TypeScript too: a type error in a test is a failure, not a runtime surprise.
npm run --silent typecheck || status=1
npx vitest run --reporter=default --reporter=json --outputFile=.cache/vitest.json "$@" || status=$?
node scripts/summarize-tests.mjs .cache/vitest.json || status=1
exit "$status"
