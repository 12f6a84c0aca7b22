#!/usr/bin/env bash
# sglang-cached with nothing but curl: health, a miss then a hit, n-aware reuse, Cache-Control,
# a replayed stream, an OpenAI chat call, a passed-through route, and the /cache/* routes.
#
#   examples/curl_examples.sh
#   SGLANG_CACHED_URL=http://127.0.0.1:30001 examples/curl_examples.sh
#
# Targets SGLANG_CACHED_URL (default http://127.0.0.1:30001). When nothing answers there, it
# starts sglang-cached on a free port in front of SGLANG_URL (default http://127.0.0.1:30000),
# and, when nothing answers there either, a fake SGLang server too; it stops what it started.
# SGLANG_API_KEY is sent as the bearer token when set. PYTHON picks the interpreter that has
# sglang_client installed (default: this checkout's .venv, else python3); it is also used to
# read JSON. Exits non-zero when a request fails or an X-Cache answer is not the promised one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=python3
  [[ -x "$here/../.venv/bin/python" ]] && PYTHON="$here/../.venv/bin/python"
fi
PROXY="${SGLANG_CACHED_URL:-http://127.0.0.1:30001}"
PROXY="${PROXY%/}"
SGLANG="${SGLANG_URL:-http://127.0.0.1:30000}"
SGLANG="${SGLANG%/}"
auth=()
[[ -n "${SGLANG_API_KEY:-}" ]] && auth=(-H "Authorization: Bearer $SGLANG_API_KEY")

tmp="$(mktemp -d)"
started=()
cleanup() {  # ${a[@]+"${a[@]}"}: an empty array under `set -u`, even in bash 3
  for pid in ${started[@]+"${started[@]}"}; do kill "$pid" 2>/dev/null || true; done
  for pid in ${started[@]+"${started[@]}"}; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

answers() { curl -sS -o /dev/null --max-time 2 "$1/health" 2>/dev/null; }
free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_healthy() {  # wait_healthy URL PID
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null --max-time 2 "$1/health" 2>/dev/null && return 0
    if ! kill -0 "$2" 2>/dev/null; then
      echo "the server for $1 exited (is sglang_client installed for $PYTHON?)" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "$1 did not become healthy" >&2
  return 1
}

if ! answers "$PROXY"; then
  echo "Nothing answers at $PROXY."
  if ! answers "$SGLANG"; then
    port="$(free_port)"
    SGLANG="http://127.0.0.1:$port"
    "$PYTHON" -m sglang_client.testing --port "$port" >/dev/null &
    started+=("$!")
    wait_healthy "$SGLANG" "$!"
    echo "Started a fake SGLang server at $SGLANG."
  fi
  port="$(free_port)"
  PROXY="http://127.0.0.1:$port"
  "$PYTHON" -m sglang_client.server.cli start --sglang-url "$SGLANG" --port "$port" \
    --store memory --quiet >/dev/null &
  started+=("$!")
  wait_healthy "$PROXY" "$!"
  echo "Started sglang-cached at $PROXY in front of $SGLANG (memory store)."
fi
echo

# post PATH JSON [curl options...]: body to $tmp/body, headers to $tmp/headers
post() {
  local path=$1 body=$2
  shift 2
  curl -fsS --max-time 120 -D "$tmp/headers" -o "$tmp/body" ${auth[@]+"${auth[@]}"} \
    -H 'Content-Type: application/json' "$@" -d "$body" "$PROXY$path"
}
x_cache() { tr -d '\r' <"$tmp/headers" | awk -F': ' 'tolower($1) == "x-cache" { print $2 }'; }
summary() {
  "$PYTHON" -c '
import json, sys
data = json.load(open(sys.argv[1]))
items = data if isinstance(data, list) else [data]
first = items[0]
text = first["text"] if "text" in first else first["choices"][0]["message"]["content"]
print(f"{len(items)} result(s), first: {text[:40]!r}")' "$tmp/body"
}
# The first N characters of each line of stdin. Not `cut -c`: GNU cut counts bytes, and cutting
# a real model's text inside a UTF-8 character leaves bytes a terminal cannot decode.
clip() {
  "$PYTHON" -c '
import sys
for line in sys.stdin.buffer.read().decode("utf-8", "replace").splitlines():
    print(line[: int(sys.argv[1])])' "$1"
}
expect() {  # expect STEP WANTED...: the last answer's X-Cache must be one of WANTED
  local step=$1 got
  shift
  got="$(x_cache)"
  printf '  %-34s X-Cache: %-8s %s\n' "$step" "$got" "$(summary)"
  for want in "$@"; do [[ "$got" == "$want" ]] && return 0; done
  echo "FAILED: $step answered X-Cache: $got, expected one of: $*" >&2
  exit 1
}

run="$(date +%s)-$$"  # a fresh prompt, so the first request is a miss
body="{\"text\": \"Write one line about the sea ($run).\", \"sampling_params\": {\"max_new_tokens\": 16, \"temperature\": 0.8}}"
body_n3="{\"text\": \"Write one line about the sea ($run).\", \"sampling_params\": {\"max_new_tokens\": 16, \"temperature\": 0.8, \"n\": 3}}"

echo "GET $PROXY/health"
curl -fsS --max-time 30 "$PROXY/health"
echo
echo

echo "POST /generate"
post /generate "$body"
expect "first time" MISS
post /generate "$body"
expect "same request" HIT
post /generate "$body_n3"
expect "n=3: 1 cached + 2 generated" PARTIAL
post /generate "$body_n3"
expect "n=3 again" HIT
post /generate "$body" -H 'Cache-Control: no-cache'
expect "Cache-Control: no-cache" MISS
post /generate "$body" -H 'Cache-Control: no-store'
expect "Cache-Control: no-store" BYPASS

echo
echo "POST /generate with \"stream\": true (a hit is replayed as one event, then [DONE])"
stream="${body%\}}, \"stream\": true}"
curl -fsS -N --max-time 120 ${auth[@]+"${auth[@]}"} -H 'Content-Type: application/json' -d "$stream" \
  "$PROXY/generate" | clip 100
echo

echo "POST /v1/chat/completions"
chat="{\"model\": \"default\", \"messages\": [{\"role\": \"user\", \"content\": \"Say hello ($run).\"}], \"max_tokens\": 12, \"temperature\": 0}"
post /v1/chat/completions "$chat"
expect "chat, first time" MISS
post /v1/chat/completions "$chat"
expect "chat, same request" HIT

echo
echo "GET /v1/models (passed through to SGLang unchanged)"
curl -fsS --max-time 30 ${auth[@]+"${auth[@]}"} "$PROXY/v1/models" | clip 120
echo
echo "GET /cache/stats"
curl -fsS --max-time 30 ${auth[@]+"${auth[@]}"} "$PROXY/cache/stats" | "$PYTHON" -c '
import json, sys
s = json.load(sys.stdin)
print("  {} keys, {} completions; hits={} misses={} partial={} hit_rate={:.2f}".format(
    s["num_keys"], s["total_responses"], s["hits"], s["misses"], s["partial_hits"], s["hit_rate"]))'
echo "GET /cache/info?limit=1"
curl -fsS --max-time 30 ${auth[@]+"${auth[@]}"} "$PROXY/cache/info?limit=1" | clip 160
echo
echo "Done."
