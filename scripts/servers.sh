# Sourced by scripts/test and scripts/bench-aws: installs the Kinesis and
# DynamoDB API servers into the checkout (moto in .venv, kinesalite in
# .tools) with the Python KPL aggregation library (in .venv, exported as
# SLUICE_TEST_PYTHON) and cfn-lint for the deployment template, starts each on a free loopback port, exports SLUICE_TEST_MOTO and
# SLUICE_TEST_KINESALITE, and stops them when the calling script exits.

MOTO_VERSION=5.2.5
KINESALITE_VERSION=3.3.3
KINESIS_AGG_VERSION=1.2.3
# This version runs the SAM transform offline and checks inside Serverless
# resources; later ones skip them.
CFN_LINT_VERSION=1.53.3

install_servers() {
  if ! .venv/bin/python -c "import moto, aws_kinesis_agg; assert moto.__version__ == '$MOTO_VERSION'" 2>/dev/null \
    || [ "$(.venv/bin/cfn-lint --version 2>/dev/null)" != "cfn-lint $CFN_LINT_VERSION" ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet "moto[server]==$MOTO_VERSION" "aws-kinesis-agg==$KINESIS_AGG_VERSION" \
      "cfn-lint==$CFN_LINT_VERSION"
  fi
  # The Python aggregation library checks Sluice's KPL codec from outside.
  export SLUICE_TEST_PYTHON="$PWD/.venv/bin/python"
  if [ "$(node -p "require('./.tools/node_modules/kinesalite/package.json').version" 2>/dev/null)" != "$KINESALITE_VERSION" ]; then
    npm install --prefix .tools --no-audit --no-fund --loglevel=error "kinesalite@$KINESALITE_VERSION"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_port() {
  local name=$1 port=$2 log=$3
  for _ in $(seq 1 200); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "$name did not start on 127.0.0.1:$port; its log:" >&2
  cat "$log" >&2
  return 1
}

server_pids=()
stop_servers() {
  for pid in "${server_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}

start_servers() {
  local logs
  logs=$(mktemp -d)
  trap stop_servers EXIT
  local moto_port moto_auth_port kinesalite_port
  moto_port=$(free_port)
  .venv/bin/python scripts/moto-server.py -H 127.0.0.1 -p "$moto_port" > "$logs/moto.log" 2>&1 &
  server_pids+=($!)
  kinesalite_port=$(free_port)
  KINESALITE_MODULE="$PWD/.tools/node_modules/kinesalite" \
    node scripts/kinesalite.js "$kinesalite_port" > "$logs/kinesalite.log" 2>&1 &
  server_pids+=($!)
  # A second moto that checks credentials (and knows none), for the
  # wrong-credentials tests.
  moto_auth_port=$(free_port)
  INITIAL_NO_AUTH_ACTION_COUNT=0 .venv/bin/python scripts/moto-server.py -H 127.0.0.1 -p "$moto_auth_port" > "$logs/moto-auth.log" 2>&1 &
  server_pids+=($!)
  wait_for_port moto "$moto_port" "$logs/moto.log"
  wait_for_port moto-auth "$moto_auth_port" "$logs/moto-auth.log"
  wait_for_port kinesalite "$kinesalite_port" "$logs/kinesalite.log"
  export SLUICE_TEST_MOTO="http://127.0.0.1:$moto_port"
  export SLUICE_TEST_KINESALITE="http://127.0.0.1:$kinesalite_port"
  export SLUICE_TEST_MOTO_AUTH="http://127.0.0.1:$moto_auth_port"
  echo "moto on $SLUICE_TEST_MOTO, kinesalite on $SLUICE_TEST_KINESALITE"
}
