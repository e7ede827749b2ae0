#!/usr/bin/env bash
# The embedded default, end to end: the sandbox APIs + Airflow standalone (LocalExecutor, SQLite), then one
# finished run of optimove_user_sync. Leaves Airflow and the sandbox running for you to explore
# (Ctrl-C stops both) unless DEMO_EXIT=1.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.venv/bin"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
# The Test button of the Optimove and Netmera connection forms (Airflow disables it by default).
export AIRFLOW__CORE__TEST_CONNECTION="${AIRFLOW__CORE__TEST_CONNECTION:-Enabled}"
export AIRFLOW__API__PORT="${AIRFLOW_PORT:-8080}"
# Tasks reach the API server here; it defaults to :8080 whatever [api] port says.
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$AIRFLOW__API__PORT/execution/"
# The sandbox keeps its data in memory and starts empty, and the state database records what Netmera holds. So
# the demo's own state database starts empty too: one kept from an earlier demo would say every customer was
# delivered already, and this demo would send nothing. (A state database you name yourself is kept as it is.)
DEMO_STATE_DB="$AIRFLOW_HOME/optimove_netmera_state.db"
FRESH_STATE_DB=0
if [[ -z "${OPTIMOVE_NETMERA_STATE_DB_URL:-}" ]]; then
  FRESH_STATE_DB=1
  export OPTIMOVE_NETMERA_STATE_DB_URL="sqlite:///$DEMO_STATE_DB"
fi
OPTIMOVE_PORT="${OPTIMOVE_PORT:-8301}"
NETMERA_PORT="${NETMERA_PORT:-8302}"
CUSTOMERS="${CUSTOMERS:-1000}"
export AIRFLOW_CONN_OPTIMOVE_DEFAULT="{\"conn_type\": \"optimove\", \"host\": \"http://127.0.0.1:$OPTIMOVE_PORT\", \"extra\": {\"api_key\": \"sandbox-optimove-key\"}}"
export AIRFLOW_CONN_NETMERA_DEFAULT="{\"conn_type\": \"netmera\", \"host\": \"http://127.0.0.1:$NETMERA_PORT\", \"password\": \"sandbox-netmera-key\"}"
export OPTIMOVE_NETMERA_INBOUND_API_KEY="${OPTIMOVE_NETMERA_INBOUND_API_KEY:-sandbox-netmera-key}"
mkdir -p "$AIRFLOW_HOME"
PIDS=()
# Each background service runs in its own session (setsid), so stopping it stops its whole process group:
# `airflow standalone` starts the scheduler, API server, DAG processor and triggerer as children.
# The scheduler can hang in its shutdown, waiting on an idle LocalExecutor worker (seen after DEMO_EXIT=1: it
# outlived the demo as an orphan), so whatever is left of a group after 10 s is killed.
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 20); do
    alive=0
    for pid in "${PIDS[@]}"; do ! pgrep -g "$pid" >/dev/null || alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.5
  done
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$OPTIMOVE_PORT" "$NETMERA_PORT" "$AIRFLOW__API__PORT" 8793 8794; do
  if ! port_free "$port"; then
    echo "!! port $port is in use (another Airflow or sandbox still running?); stop it, or set OPTIMOVE_PORT /" \
      "NETMERA_PORT / AIRFLOW_PORT" >&2
    exit 1
  fi
done

wait_http() {  # url, seconds, what
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if (( SECONDS > deadline )); then echo "!! $3 did not come up within $2 s; see $AIRFLOW_HOME/*.log" >&2; exit 1; fi
    sleep 1
  done
}

echo "== sandbox: Optimove on :$OPTIMOVE_PORT, Netmera on :$NETMERA_PORT ($CUSTOMERS customers)"
setsid "$BIN/python" -m optimove_netmera.sandbox --optimove-port "$OPTIMOVE_PORT" --netmera-port "$NETMERA_PORT" \
  --customers "$CUSTOMERS" >"$AIRFLOW_HOME/sandbox.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$OPTIMOVE_PORT/_sandbox/health" 60 "the sandbox"
wait_http "http://127.0.0.1:$NETMERA_PORT/_sandbox/health" 60 "the sandbox"

echo "== state database: $OPTIMOVE_NETMERA_STATE_DB_URL"
if [[ $FRESH_STATE_DB == 1 && -e "$DEMO_STATE_DB" ]]; then
  # The sandbox started empty, so the state of the last demo no longer describes it: kept aside, not deleted.
  for suffix in "" -wal -shm; do
    if [[ -e "$DEMO_STATE_DB$suffix" ]]; then mv -f "$DEMO_STATE_DB$suffix" "$AIRFLOW_HOME/optimove_netmera_state.previous.db$suffix"; fi
  done
  echo "   started afresh, as the sandbox did (the last demo's is now optimove_netmera_state.previous.db)"
fi
"$BIN/python" -m optimove_netmera.store upgrade

echo "== airflow standalone on :$AIRFLOW__API__PORT (AIRFLOW_HOME=$AIRFLOW_HOME; log: standalone.log)"
PATH="$BIN:$PATH" setsid "$BIN/airflow" standalone >"$AIRFLOW_HOME/standalone.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$AIRFLOW__API__PORT/api/v2/monitor/health" 180 "airflow standalone"
"$BIN/airflow" pools set netmera_api 4 "Concurrent Netmera requests" >/dev/null

echo "== waiting for the DAG processor to parse the four DAGs"
deadline=$((SECONDS + 180))
until [[ "$("$BIN/airflow" dags list -o plain 2>/dev/null | grep -c '^optimove_')" -ge 4 ]]; do
  if (( SECONDS > deadline )); then "$BIN/airflow" dags list-import-errors; exit 1; fi
  sleep 2
done
for dag in optimove_user_sync optimove_campaign_send optimove_realtime_send optimove_campaign_reconcile; do
  "$BIN/airflow" dags unpause "$dag" >/dev/null
done
RUN_ID="demo__$(date -u +%Y%m%dT%H%M%S)"
echo "== triggering optimove_user_sync (run $RUN_ID)"
"$BIN/airflow" dags trigger optimove_user_sync --run-id "$RUN_ID" >/dev/null
deadline=$((SECONDS + 600))
while :; do
  state="$("$BIN/airflow" dags state optimove_user_sync "$RUN_ID" 2>/dev/null | tail -n 1)"
  case "$state" in
    success) break ;;
    failed) echo "!! the sync failed; see the task logs in the UI or under $AIRFLOW_HOME/logs" >&2; exit 1 ;;
  esac
  if (( SECONDS > deadline )); then echo "!! the sync did not finish within 10 minutes (state: $state)" >&2; exit 1; fi
  sleep 3
done
echo "== finished. On a new .airflow, unpausing also started the latest scheduled run: an incremental sync after the"
echo "   initial one, which finds nothing new to send (a later demo finds that run there already, and has one run)."
"$BIN/python" -m optimove_netmera.sync report --last 2
echo "   Netmera now holds $(curl -fsS "http://127.0.0.1:$NETMERA_PORT/_sandbox/profiles?limit=1" | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["total"])') profiles."
PASSWORD_FILE="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
echo "== Airflow UI: http://127.0.0.1:$AIRFLOW__API__PORT (user admin, password in $PASSWORD_FILE)"
echo "== try a campaign: Optimove's bulk-send event, exactly as Netmera's guide shows it (host changed):"
echo "   curl --location --request POST 'http://127.0.0.1:$AIRFLOW__API__PORT/rest/optimove/event/optimove-netmera' \\"
echo "     -H 'X-netmera-api-key: $OPTIMOVE_NETMERA_INBOUND_API_KEY' -H 'Content-Type: application/json' \\"
echo "     --data-raw '{\"eventTypeId\":13,\"timeStamp\":\"$(date -u '+%Y-%m-%d %H:%M:%S')\",\"campaignId\":1001,\"channelId\":506}'"
echo "   then watch optimove_campaign_send in the UI; deliveries: curl http://127.0.0.1:$NETMERA_PORT/_sandbox/deliveries"
if [[ "${DEMO_EXIT:-0}" == "1" ]]; then exit 0; fi
echo "   Airflow and the sandbox keep running; Ctrl-C stops both."
wait
