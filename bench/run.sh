#!/usr/bin/env bash
# make bench: Membrane's side-by-side benchmarks. Writes bench/results/latest.md.
#   BENCH_QUICK=1   fewer rounds, shorter runs (smoke test)
#   BENCH_ONLY=a,b  only these blocks: datapath,flat,update,epadd,l7,mem
#   BENCH_ARGS=...  more flags for membrane-bench run (e.g. --no-profile)
#   BENCH_NICE=N    nice value of the run and all it starts (default -10)
#   BENCH_AGENT_ARGS="--flag value"  more flags for the bench's agent
#   BENCH_LOGS=DIR  keep the logs (agent, servers, tools) in DIR
# Needs root. Everything it makes (namespaces, links, netfilter rules, pins,
# processes) carries the mbrb prefix and is removed on exit, even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "bench/run.sh: needs root (network namespaces, eBPF, netfilter)" >&2
	exit 1
fi

work=$(mktemp -d /tmp/membrane-bench.XXXXXX)
cleanup() {
	status=$?
	trap - EXIT INT TERM
	if [ -x "$work/membrane-bench" ]; then
		"$work/membrane-bench" cleanup --work "$work" || true
	fi
	if [ "$status" != 0 ] && [ -d "$work/logs" ]; then
		echo "bench/run.sh: failed; agent log tail:" >&2
		tail -n 20 "$work/logs/agent.log" >&2 2>/dev/null || true
	fi
	if [ -n "${BENCH_LOGS:-}" ] && [ -d "$work/logs" ]; then
		mkdir -p "$BENCH_LOGS" && cp -r "$work/logs/." "$BENCH_LOGS/" || true
	fi
	rm -rf "$work"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

go=${GO:-go}
# Own copies of the binaries: the tree may be rebuilt while the run goes on.
"$go" build -o "$work/membrane" ./cmd/membrane
"$go" build -o "$work/bench-tcp" ./bench/cmd/bench-tcp
"$go" build -o "$work/membrane-bench" ./bench/cmd/membrane-bench

args=(run --work "$work" --out bench/results/latest.md)
if [ -n "${BENCH_QUICK:-}" ] && [ "${BENCH_QUICK}" != 0 ]; then
	args+=(--quick)
fi
if [ -n "${BENCH_ONLY:-}" ]; then
	args+=(--only "$BENCH_ONLY")
fi
if [ -n "${BENCH_AGENT_ARGS:-}" ]; then
	args+=(--agent-args "$BENCH_AGENT_ARGS")
fi
# shellcheck disable=SC2206
args+=(${BENCH_ARGS:-})
# The machine is shared: the bench and everything it starts (agent, servers,
# clients, iptables-restore, nft, nginx) run at a higher priority than the
# rest, the same for every variant, so that other work disturbs it less.
nice -n "${BENCH_NICE:--10}" "$work/membrane-bench" "${args[@]}"
