#!/bin/sh
# Records what a real server answers to the requests lm-generate sends, for tests/test_remote.py.
# usage: record.sh KIND UPSTREAM   (KIND: vllm or llama.cpp; UPSTREAM: the real server's root URL)
# Each case is sent once through a recording proxy (tests/replay_server.py) into KIND.jsonl;
# a case the server kind cannot take (llama.cpp has no regex) fails in lm-generate with a
# one-line reason and records nothing.
set -u
here=$(dirname "$0")
kind=$1 upstream=$2 port=${PORT:-8399}
out="$here/$kind.jsonl"
rm -f "$out"
python "$here/../../replay_server.py" record "$upstream" "$out" --port "$port" &
proxy=$!
trap 'kill $proxy' EXIT
sleep 2
server="http://127.0.0.1:$port"
gen() { lm-generate --server "$server" --seed 1 "$@"; echo "exit $?" >&2; }
gen -n 24 < "$here/prompts.jsonl"
gen -n 16 --raw < "$here/prompts.jsonl"
gen -n 24 --stop "." < "$here/prompts.jsonl"
gen -n 8 --choice yes --choice no "Is the sky blue? Answer yes or no."
gen -n 8 --regex '[0-9]+' "How many legs does a dog have? Answer with a number."
gen -n 60 --json-schema '{"type":"object","properties":{"animal":{"type":"string"},"legs":{"type":"integer"}},"required":["animal","legs"]}' "Describe a dog as JSON."
gen -n 40 --tool-choice required < "$here/tools.jsonl"
# The constraints sent as lm-serve's own fields, which this server does not read: what it answers
# unconstrained is what a client that trusted it would have passed on.
gen -n 8 --server-kind lmpipe --choice yes --choice no "Is the sky blue? Answer yes or no."
gen -n 8 --server-kind lmpipe --regex '[0-9]+' "How many legs does a dog have? Answer with a number."
