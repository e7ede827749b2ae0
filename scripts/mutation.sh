#!/usr/bin/env bash
# Mutation testing of the modules that hold the safeguards (`make mutation`; never part of `make test`).
#
# mutmut expects the code under ./, src/ or source/, so the package is staged in build/mutation/src with the tests,
# DAGs, plugin and settings beside it; mutmut then mutates the staged copy (never include/) and, per mutant, runs
# only the selected tests that execute the mutated function (SQLite backend, fixed order, first failure stops).
# MUTATION_ONLY="src/optimove_netmera/http.py ..." narrows the modules, MUTATION_TESTS="tests/clients/test_http.py ..."
# the test selection (defaults: [tool.mutmut] in pyproject.toml). MUTATION_JOBS (2) is the number of parallel mutants.
# MUTATION_NAMES="optimove_netmera.campaigns.send.x_send_chunks* ..." runs only the mutants of those functions (mutmut
# names; the score then counts only them), MUTATION_DESELECT="crash or ambiguous" leaves those tests out (pytest -k).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${BIN:-$ROOT/.venv/bin}
STAGE=$ROOT/build/mutation
rm -rf "$STAGE"
mkdir -p "$STAGE/src"
cp -r include/optimove_netmera "$STAGE/src/"
cp -r tests dags plugins config "$STAGE/"
find "$STAGE" -name __pycache__ -prune -exec rm -rf {} +
"$BIN/python" - "$ROOT/pyproject.toml" "$STAGE/pyproject.toml" "${MUTATION_ONLY:-}" "${MUTATION_TESTS:-}" \
  "${MUTATION_DESELECT:-}" <<'PY'
import re, sys
src, dst, only, tests, deselect = sys.argv[1:]
text = open(src).read()
if deselect.strip():
    text = text.replace('"-k", "not postgres"', f'"-k", "not postgres and not ({deselect.strip()})"')
for key, value in (("only_mutate", only), ("pytest_add_cli_args_test_selection", tests)):
    if value.split():
        listed = ", ".join(f'"{v}"' for v in value.split())
        text = re.sub(rf"{key} = \[[^\]]*\]", f"{key} = [{listed}]", text, flags=re.S)
open(dst, "w").write(text)
PY
cd "$STAGE"
export OPTIMOVE_NETMERA_CONFIG="$STAGE/config/optimove_netmera.yaml"
# subprocesses (the sandbox) import the unmutated staged copy; mutmut itself drops this entry and imports mutants/src
export PYTHONPATH="$STAGE/src"
# shellcheck disable=SC2086  # MUTATION_NAMES: globs for mutmut, not for the shell
set -f
"$BIN/mutmut" run --max-children "${MUTATION_JOBS:-2}" ${MUTATION_NAMES:-} || true
set +f
"$BIN/mutmut" results --all true > "$STAGE/results.txt" || true
"$BIN/python" - "$STAGE" <<'PY'
import json, pathlib, sys
from collections import Counter
stage = pathlib.Path(sys.argv[1])
counts: Counter[str] = Counter()
for line in (stage / "results.txt").read_text().splitlines():
    if ": " in line:
        counts[line.rsplit(": ", 1)[1].strip()] += 1
killed = counts["killed"] + counts["timeout"]
tested = killed + counts["survived"]
print(f"mutants: {dict(counts)}")
print(f"mutation score: {killed}/{tested} = {100 * killed / max(tested, 1):.1f}% (killed or timed out / tested)")
PY
