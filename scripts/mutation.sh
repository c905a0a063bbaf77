#!/usr/bin/env bash
# Mutation-test the pure core (gated/plates.py, policy.py, gate.py) against tests/core*.
#
# Not part of every CI run: it runs the core tests once per mutant (about 1,900
# of them; half an hour to an hour on a shared 2-core machine with one child).
# Configuration: [tool.mutmut] in pyproject.toml. Every survivor is either killed
# by a new test or listed as equivalent in docs/mutation-testing.md.
#
#   scripts/mutation.sh                 run everything (one child process)
#   MUTATION_CHILDREN=4 scripts/mutation.sh
#   scripts/mutation.sh NAME...         re-run only the named mutants
#
# Afterwards: .venv/bin/mutmut show NAME prints a mutant's diff.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/pip ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[test,mutation]"

# mutmut keeps its copy of the tree and its verdicts in mutants/ (git-ignored);
# a verdict is reused until the mutated function or the tests change
.venv/bin/mutmut run --max-children "${MUTATION_CHILDREN:-1}" "$@"

echo
echo "surviving mutants per module:"
for module in plates policy gate; do
    total=$(.venv/bin/mutmut results --all true | grep -c "^ *gated\.${module}\." || true)
    alive=$(.venv/bin/mutmut results | grep -c "^ *gated\.${module}\..*: \(survived\|no tests\)" || true)
    echo "  gated/${module}.py: ${alive} of ${total}"
done
