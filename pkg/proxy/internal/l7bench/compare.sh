#!/usr/bin/env bash
# compare.sh: side-by-side keep-alive req/s of direct, nginx as a reverse
# proxy, and one or more builds of l7bench (Membrane's proxy), on loopback,
# interleaved round by round with the order rotated. Like `make bench`
# row 7: wrk -t1 on CPU 0, an nginx origin (1 worker) on CPU 1, the proxies
# unpinned, 16 connections.
#
#   go build -o /tmp/l7bench.new ./pkg/proxy/internal/l7bench
#   pkg/proxy/internal/l7bench/compare.sh new=/tmp/l7bench.new [old=/tmp/l7bench.old ...]
#
# Environment: ROUNDS (7), DUR (seconds per run, 3), CONNS (16),
# WRK_THREADS (1), PIN (1: pin wrk and the origin as above; 0: no pinning).
# Prints each run and, per variant, the median and min-max over the rounds
# of its ratio to nginx and to direct (ratios per round), and the median CPU
# time per request of each proxy (user+system of its processes, which is
# less disturbed by the machine's other work than the rates).
set -euo pipefail

ROUNDS=${ROUNDS:-7}
DUR=${DUR:-3}
CONNS=${CONNS:-16}
WRK_THREADS=${WRK_THREADS:-1}
PIN=${PIN:-1}
BASE=${BASE_PORT:-18180}
work=$(mktemp -d /tmp/l7cmp.XXXXXX)
pids=()

cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for c in origin rproxy; do
		[ -f "$work/$c.pid" ] && kill "$(cat "$work/$c.pid")" 2>/dev/null || true
	done
	sleep 0.3
	rm -rf "$work"
}
trap cleanup EXIT

pin() { if [ "$PIN" = 1 ]; then echo "taskset -c $1"; fi; }

mkdir -p "$work/logs" "$work/tmp"
temps="client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp; uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;"
cat >"$work/origin.conf" <<CONF
worker_processes 1;
pid $work/origin.pid;
error_log $work/logs/origin.err warn;
events { worker_connections 4096; }
http {
  access_log off; $temps
  keepalive_requests 1000000; keepalive_timeout 60s;
  server { listen 127.0.0.1:$BASE; location / { return 200 "ok\n"; } }
}
CONF
cat >"$work/rproxy.conf" <<CONF
worker_processes auto;
pid $work/rproxy.pid;
error_log $work/logs/rproxy.err warn;
events { worker_connections 4096; }
http {
  access_log off; $temps
  keepalive_requests 1000000; keepalive_timeout 60s;
  upstream origin { server 127.0.0.1:$BASE; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$((BASE + 1));
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
CONF
$(pin 1) /usr/sbin/nginx -p "$work" -c "$work/origin.conf"
/usr/sbin/nginx -p "$work" -c "$work/rproxy.conf"

sleep 0.3
names=(direct nginx)
urls=("http://127.0.0.1:$BASE/" "http://127.0.0.1:$((BASE + 1))/")
procs=("" "$(pgrep -P "$(cat "$work/rproxy.pid")" | tr '\n' ' ')")
port=$((BASE + 2))
for arg in "$@"; do
	name=${arg%%=*}
	bin=${arg#*=}
	"$bin" -listen "127.0.0.1:$port" -upstream "127.0.0.1:$BASE" 2>"$work/logs/$name.err" &
	pids+=($!)
	procs+=("$!")
	names+=("$name")
	urls+=("http://127.0.0.1:$port/")
	port=$((port + 1))
done
sleep 0.5
n=${#names[@]}
# Warm up every path once.
for ((i = 0; i < n; i++)); do
	$(pin 0) wrk -t"$WRK_THREADS" -c"$CONNS" -d1s "${urls[$i]}" >/dev/null
done

cputicks() { # total utime+stime of the given pids
	local s=0 p
	for p in "$@"; do s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
	echo "$s"
}
tck=$(getconf CLK_TCK)
declare -A rps cpu
for ((r = 0; r < ROUNDS; r++)); do
	line="round $r:"
	for ((k = 0; k < n; k++)); do
		i=$(((k + r) % n))
		# shellcheck disable=SC2086
		c0=$(cputicks ${procs[$i]})
		out=$($(pin 0) wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DUR}s" "${urls[$i]}")
		# shellcheck disable=SC2086
		c1=$(cputicks ${procs[$i]})
		nreq=$(awk '/requests in/ {print $1}' <<<"$out")
		cpu[$r,$i]=$(awk -v c=$((c1 - c0)) -v t="$tck" -v n="$nreq" 'BEGIN {printf "%.1f", c / t * 1e6 / n}')
		if grep -q -e "Non-2xx" -e "Socket errors" <<<"$out"; then
			echo "${names[$i]}: errors: $(grep -e Non-2xx -e 'Socket errors' <<<"$out")" >&2
		fi
		v=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
		rps[$r,$i]=$v
		line+=" ${names[$i]}=$v"
	done
	echo "$line"
done

median() { sort -n | awk '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f (%.1f-%.1f)", m, v[1], v[NR]}'; }

summary() { # label, numerator index, denominator index
	local vals=()
	for ((r = 0; r < ROUNDS; r++)); do
		vals+=("$(awk -v a="${rps[$r,$2]}" -v b="${rps[$r,$3]}" 'BEGIN {printf "%.3f", a / b}')")
	done
	printf '%s\n' "${vals[@]}" | sort -n | awk -v l="$1" '{v[NR] = $1} END {
		m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
		printf "%-24s median %.3f  min %.3f  max %.3f  (%d rounds)\n", l, m, v[1], v[NR], NR }'
}
echo
summary "nginx/direct" 1 0
for ((i = 2; i < n; i++)); do
	summary "${names[$i]}/nginx" "$i" 1
	summary "${names[$i]}/direct" "$i" 0
done
for ((i = 1; i < n; i++)); do
	printf '%-24s CPU µs/request: median %s\n' "${names[$i]}" "$(for ((r = 0; r < ROUNDS; r++)); do echo "${cpu[$r,$i]}"; done | median)"
done
if [ $((n - 2)) -ge 2 ]; then
	for ((i = 3; i < n; i++)); do summary "${names[$i]}/${names[2]}" "$i" 2; done
fi
