#!/usr/bin/env bash
# scripts/demo.sh — `make demo`: the seed's deployment on one host, with real
# software. Four `scheduler serve` machines (public IPs 127.0.0.2–5; the first
# embeds etcd; three role=worker, one role=lb), the seed's units from
# examples/units (nginx@1 and nginx@2 announced by announce, a global
# prefetch oneshot), render on the LB machine writing haproxy.cfg from the
# announcements and reloading a real haproxy, traffic through haproxy, a worker
# killed with -9, its instance rescheduled, the config and haproxy updated,
# traffic again. Exit 0 only if every check held.
#
#   make demo                 build, then run this
#   KEEP=1 make demo          leave everything running and print how to poke at it
#   scripts/demo.sh stop      stop what a KEEP=1 run left running
#
# Environment: KEEP=1; DEMO_PORT (haproxy's port on 127.0.0.1, default: the
# first free of 8000 18000 28000); DEMO_ETCD_PORT (default 23790).
# Working files (logs, etcd data, unit copies, haproxy.cfg) are under ./.demo/.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BIN=$ROOT/bin
D=$ROOT/.demo
KEEP=${KEEP:-0}
NS=/clusterstate/demo
T0=$(date +%s.%N)

# ---------------------------------------------------------------- output ----
if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' Y=$'\e[33m' N=$'\e[0m'; else B= G= R= Y= N=; fi
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%5.1fs", b-a}'; }
step() { printf '\n%s==> [%s] %s%s\n' "$B" "$(elapsed)" "$*" "$N"; }
say() { printf '    %s\n' "$*"; }
# show CMD…: print the command as the user would type it, run it, indent its output.
quote() {
	local a out=
	for a in "$@"; do
		if [[ $a =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+="$a "; else out+="'$a' "; fi
	done
	printf '%s' "${out% }" | sed "s#$BIN/#bin/#g; s#$ROOT/##g"
}
show() {
	printf '%s$ %s%s\n' "$Y" "$(quote "$@")" "$N"
	"$@" 2>&1 | sed 's/^/    /'
	return "${PIPESTATUS[0]}"
}
FAILED=0
ok() { printf '    %s✔ %s%s\n' "$G" "$*" "$N"; }
fail() {
	printf '    %s✘ %s%s\n' "$R" "$*" "$N"
	FAILED=$((FAILED + 1))
}
die() {
	printf '\n%sdemo: %s%s\n' "$R" "$*" "$N" >&2
	exit 1
}

# wait_for SECONDS DESCRIPTION CMD…: poll CMD every 0.1s until it succeeds.
wait_for() {
	local limit=$1 what=$2
	shift 2
	local end
	end=$(awk -v a="$(date +%s.%N)" -v l="$limit" 'BEGIN{printf "%.1f", a+l}')
	until "$@" >/dev/null 2>&1; do
		if awk -v a="$(date +%s.%N)" -v e="$end" 'BEGIN{exit !(a>e)}'; then
			fail "timed out after ${limit}s waiting for: $what"
			return 1
		fi
		sleep 0.1
	done
}

# ------------------------------------------------------------- processes ----
PIDS=()
# bg NAME CMD…: start CMD in its own session (process group), log to .demo/NAME.log.
bg() {
	local name=$1
	shift
	setsid "$@" >"$D/$name.log" 2>&1 &
	local pid=$!
	disown "$pid" # no "Killed" line from bash when the demo kills a machine
	PIDS+=("$pid")
	echo "$pid $name" >>"$D/pids"
	eval "PID_${name//[^a-zA-Z0-9]/_}=$pid"
}

# term_wait PID…: SIGTERM each process group, wait up to 5s for them to end.
term_wait() {
	local pid
	for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; done
	for _ in $(seq 50); do
		local alive=0
		for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
		[ $alive = 0 ] && return
		sleep 0.1
	done
}

stop_all() { # stop every process listed in .demo/pids: the etcd machine last
	[ -f "$D/pids" ] || return 0
	local first rest pid
	first=$(head -n 1 "$D/pids" | cut -d' ' -f1)
	rest=$(tail -n +2 "$D/pids" | cut -d' ' -f1 | tac)
	# shellcheck disable=SC2086
	term_wait $rest          # units stop (and withdraw their keys) while etcd is up
	term_wait "$first"
	for pid in $first $rest; do kill -KILL -- "-$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null; done
	rm -f "$D/pids"
	rm -rf "$D/run"
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	[ -n "${HAMMER_PID:-}" ] && kill "$HAMMER_PID" 2>/dev/null
	if [ "$KEEP" = 1 ] && [ "${DONE:-0}" = 1 ]; then
		return
	fi
	stop_all
	exit $rc
}

if [ "${1:-}" = stop ]; then
	stop_all
	echo "demo: stopped"
	exit 0
fi

# ----------------------------------------------------------- preflight ----
for b in scheduler announce render; do
	[ -x "$BIN/$b" ] || die "$BIN/$b is missing: run 'make build' (or 'make demo', which builds)"
done
for p in haproxy nginx curl unshare; do
	command -v "$p" >/dev/null || [ -x "/usr/sbin/$p" ] || die "$p is not installed: run 'make deps' as root (or: apt-get install haproxy nginx-light curl util-linux)"
done
export PATH=$PATH:/usr/sbin:/sbin
if [ "$(id -u)" -ne 0 ]; then
	die "the demo runs as root: each simulated machine gets its own host name (unshare --uts), as real machines have; run: sudo make demo"
fi

free_port() { ! (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
PORT=${DEMO_PORT:-}
if [ -z "$PORT" ]; then
	for p in 8000 18000 28000 38000; do
		if free_port 127.0.0.1 "$p"; then PORT=$p && break; fi
	done
fi
ETCD_PORT=${DEMO_ETCD_PORT:-23790}
for ip in 127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.5; do
	free_port "$ip" 8080 || die "$ip:8080 is in use (a previous demo? run: scripts/demo.sh stop)"
done
free_port 127.0.0.2 "$ETCD_PORT" || die "127.0.0.2:$ETCD_PORT is in use (set DEMO_ETCD_PORT, or run: scripts/demo.sh stop)"
[ -n "$PORT" ] && free_port 127.0.0.1 "$PORT" || die "no free port for haproxy (set DEMO_PORT)"

stop_all # leftovers of an earlier KEEP=1 run
rm -rf "$D"
mkdir -p "$D/units" "$D/lb/conf.d" "$D/lb/templates" "$D/run"
trap cleanup EXIT
trap 'echo; echo "demo: interrupted"; exit 130' INT TERM

ENDPOINT=http://127.0.0.2:$ETCD_PORT
export FLOTILLA_ENDPOINTS=$ENDPOINT
S="$BIN/scheduler"

echo "${B}flotilla demo${N}: the seed's deployment, four machines on this host (working files in .demo/)"

# ------------------------------------------------------------ machines ----
step "1. Four machines join: worker-1 embeds etcd; worker-2, worker-3 and lb-1 join it"
say "Each runs 'scheduler serve' (agent + engine candidate) with its own host name and public IP."
say "Units run as supervised processes (--executor process); no systemd or Docker needed."
machine() { # NAME IP METADATA [extra flags…]
	local name=$1 ip=$2 md=$3
	shift 3
	local id
	id=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
	echo "$id" >"$D/$name.id"
	mkdir -p "$D/$name"
	say "\$ bin/scheduler serve --machine-id ${id:0:8}… --public-ip $ip --metadata $md --executor process --data-dir .demo/$name --ttl 3s $* (host name $name)"
	bg "$name" env -u FLOTILLA_ENDPOINTS -u ETCDCTL_ENDPOINTS unshare --uts sh -c 'hostname "$0" && exec "$@"' "$name" \
		"$S" serve --machine-id "$id" --public-ip "$ip" --metadata "$md" \
		--executor process --data-dir "$D/$name" --ttl 3s "$@"
}
machine worker-1 127.0.0.2 role=worker --etcd-listen "127.0.0.2:$ETCD_PORT"
etcd_up() { ! free_port 127.0.0.2 "$ETCD_PORT" && "$S" list-machines --no-legend --dial-timeout 1s; }
wait_for 15 "embedded etcd on worker-1 ($ENDPOINT)" etcd_up ||
	die "worker-1 did not start; its log (.demo/worker-1.log):$(tail -n 20 "$D/worker-1.log" | sed 's/^/\n    /')"
machine worker-2 127.0.0.3 role=worker --endpoints "$ENDPOINT"
machine worker-3 127.0.0.4 role=worker --endpoints "$ENDPOINT"
machine lb-1 127.0.0.5 role=lb --endpoints "$ENDPOINT"
nmachines() { [ "$("$S" list-machines --no-legend | wc -l)" -eq "$1" ]; }
wait_for 15 "four machines in list-machines" nmachines 4
show "$S" list-machines
if nmachines 4; then ok "four machines joined"; else fail "expected four machines"; fi

# --------------------------------------------------------------- units ----
step "2. The seed's units from examples/units, submitted and started"
say "The demo submits copies whose paths point into this checkout and .demo/:"
for f in nginx@.service prefetch.service; do
	sed -e "s#/usr/local/bin/announce#$BIN/announce#g" \
		-e "s#/etc/flotilla/etcd.env#$D/etcd.env#g" \
		-e "s#/run/#$D/run/#g" "examples/units/$f" >"$D/units/$f"
done
echo "ETCDCTL_ENDPOINTS=$ENDPOINT" >"$D/etcd.env"
say "  /usr/local/bin/announce → bin/announce, /run/ → .demo/run/, /etc/flotilla/etcd.env → .demo/etcd.env"
show grep -E '^(ExecStart|ExecStartPost|Conflicts|MachineMetadata|Global)=' examples/units/nginx@.service examples/units/prefetch.service
cd "$D/units" || exit 1
show "$S" submit prefetch.service nginx@.service
show "$S" start prefetch.service nginx@1.service nginx@2.service ||
	fail "scheduler start did not report success"
cd "$ROOT" || exit 1

# unit_row UNIT: "MACHINEID/IP ACTIVE SUB" lines of UNIT in list-units.
unit_rows() { "$S" list-units --no-legend --full --fields unit,machine,active,sub | awk -v u="$1" '$1==u {print $2, $3, $4}'; }
unit_ip() { unit_rows "$1" | awk '$2=="active" {split($1, a, "/"); print a[2]; exit}'; }
running() { [ -n "$(unit_ip "$1")" ]; }
wait_for 30 "nginx@1 active" running nginx@1.service
wait_for 30 "nginx@2 active" running nginx@2.service
prefetched() { [ "$(unit_rows prefetch.service | grep -c ' active ')" -eq 3 ]; }
wait_for 30 "prefetch.service active on the three workers" prefetched
show "$S" list-unit-files
show "$S" list-units
IP1=$(unit_ip nginx@1.service)
IP2=$(unit_ip nginx@2.service)
if [ -n "$IP1" ] && [ -n "$IP2" ] && [ "$IP1" != "$IP2" ]; then
	ok "nginx@1 on $IP1 and nginx@2 on $IP2: on different machines (Conflicts=nginx@*.service)"
else
	fail "nginx@1 ($IP1) and nginx@2 ($IP2) should run on two different machines"
fi
if [ "$IP1" != 127.0.0.5 ] && [ "$IP2" != 127.0.0.5 ]; then
	ok "no instance on lb-1 (MachineMetadata=role=worker)"
else
	fail "an instance runs on the role=lb machine"
fi
if prefetched && ! unit_rows prefetch.service | grep -q '/127.0.0.5 '; then
	ok "prefetch.service (Global=true) ran on each of the three workers, not on lb-1"
else
	fail "prefetch.service should be active on exactly the three workers"
fi

# ----------------------------------------------------------- announce ----
step "3. Each instance announced itself (announce --detach in ExecStartPost)"
announced() { [ "$(ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINT" get --prefix --keys-only "$NS/" | grep -c .)" -eq 2 ]; }
if command -v etcdctl >/dev/null; then
	wait_for 15 "two announcements under $NS/" announced
	show env ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINT" get --prefix "$NS/"
	if announced; then ok "two keys under $NS/, each bound to a lease"; else fail "expected two announcements"; fi
else
	say "(etcdctl not installed: skipping the look at the keys)"
fi

# ----------------------------------------------------------------- lb ----
step "4. The load balancer on lb-1: render (confd's drop-in) writes haproxy.cfg and reloads haproxy"
cp examples/lb/templates/haproxy.cfg.tmpl "$D/lb/templates/haproxy.cfg.tmpl"
cat >"$D/lb/reload-haproxy" <<EOF
#!/bin/sh
# Reload the demo's master-worker haproxy: SIGUSR2, then wait for the master's
# verdict. A SIGUSR2 that lands before the master is ready kills it, and one
# that lands while it re-executes is lost: wait for readiness, resend.
log=$D/lb/haproxy.log
pid=\$(cat $D/lb/haproxy.pid 2>/dev/null) || { echo "haproxy not started yet: it will read the new file"; exit 0; }
i=0
until grep -q 'Loading ' "\$log"; do
	i=\$((i + 1)); [ \$i -gt 1000 ] && { echo "haproxy never became ready"; exit 1; }
	sleep 0.01
done
n=\$(grep -c 'Loading ' "\$log")
i=0
while [ "\$(grep -c 'Loading ' "\$log")" -le "\$n" ]; do
	[ \$((i % 100)) -eq 0 ] && { kill -USR2 "\$pid" || exit 1; }
	i=\$((i + 1)); [ \$i -gt 1000 ] && { echo "haproxy gave no verdict"; exit 1; }
	sleep 0.01
done
grep 'Loading ' "\$log" | tail -n 1 | grep -q success && echo "haproxy reloaded"
EOF
chmod +x "$D/lb/reload-haproxy"
# examples/lb/conf.d/haproxy.toml with the demo's dest and reload_cmd; its
# prefix (the namespace the units announce under) stays as it is.
sed -e "s#^dest = .*#dest = \"$D/lb/haproxy.cfg\"#" -e "s#^reload_cmd = .*#reload_cmd = \"$D/lb/reload-haproxy\"#" \
	examples/lb/conf.d/haproxy.toml >"$D/lb/conf.d/haproxy.toml"
grep -q "^prefix = \"$NS\"" "$D/lb/conf.d/haproxy.toml" || die "examples/lb/conf.d/haproxy.toml does not read $NS"
say "conf.d/haproxy.toml is examples/lb's with dest and reload_cmd pointing into .demo/lb/;"
say "the template is examples/lb/templates/haproxy.cfg.tmpl as it is (prefix = \"$NS\" in the resource)."
show cat "$D/lb/conf.d/haproxy.toml"
say "\$ HAPROXY_BIND=127.0.0.1:$PORT bin/render -backend etcdv3 -node $ENDPOINT -confdir .demo/lb -watch -publish-status -log-level info"
say "  (-publish-status: render tells etcd which revision haproxy has loaded, so that a stopping"
say "   instance's announce --withdraw waits until haproxy no longer sends it requests)"
bg render env HAPROXY_BIND="127.0.0.1:$PORT" "$BIN/render" -backend etcdv3 -node "$ENDPOINT" -confdir "$D/lb" -watch -publish-status -log-level info
wait_for 15 "render to write .demo/lb/haproxy.cfg" test -s "$D/lb/haproxy.cfg" ||
	die "render wrote nothing; its log (.demo/render.log):$(tail -n 20 "$D/render.log" | sed 's/^/\n    /')"
say "\$ haproxy -W -db -f .demo/lb/haproxy.cfg      (master-worker; render's reload_cmd sends SIGUSR2)"
bg haproxy haproxy -W -db -f "$D/lb/haproxy.cfg"
echo "$PID_haproxy" >"$D/lb/haproxy.pid"
ln -sf ../haproxy.log "$D/lb/haproxy.log"
wait_for 10 "haproxy listening on 127.0.0.1:$PORT" curl -s -o /dev/null "http://127.0.0.1:$PORT/"
wait_for 10 "haproxy master ready" grep -q 'Loading success' "$D/haproxy.log"
wait_for 15 "haproxy.cfg to name both instances" sh -c "grep -q '$IP1:8080' '$D/lb/haproxy.cfg' && grep -q '$IP2:8080' '$D/lb/haproxy.cfg'"
show sed -n '/^listen/,$p' "$D/lb/haproxy.cfg"

# --------------------------------------------------------------- traffic ----
# traffic N: N requests through haproxy; prints one line per answering instance
# and an error count; sets ANSWERED (distinct instances) and ERRS.
traffic() {
	local n=$1 i out
	: >"$D/traffic.out"
	for i in $(seq "$n"); do
		if out=$(curl -s -f -m 2 "http://127.0.0.1:$PORT/"); then echo "${out%%$'\n'*}" >>"$D/traffic.out"; else echo "ERROR" >>"$D/traffic.out"; fi
	done
	sort "$D/traffic.out" | uniq -c | sed 's/^ */    /'
	ERRS=$(grep -c '^ERROR' "$D/traffic.out")
	ANSWERED=$(grep -v '^ERROR' "$D/traffic.out" | awk '{print $1}' | sort -u | tr '\n' ' ')
}
both_answer() {
	local n i out seen=""
	for i in $(seq 10); do
		out=$(curl -s -f -m 2 "http://127.0.0.1:$PORT/") || return 1
		seen="$seen ${out%% *}"
	done
	case "$seen" in *nginx@1*) ;; *) return 1 ;; esac
	case "$seen" in *nginx@2*) ;; *) return 1 ;; esac
}
step "5. Traffic through haproxy reaches both instances"
wait_for 15 "both instances answering through haproxy" both_answer
printf '%s$ for i in $(seq 20); do curl -s http://127.0.0.1:%s/; done | sort | uniq -c%s\n' "$Y" "$PORT" "$N"
traffic 20
if [ "$ERRS" -eq 0 ] && [ "$ANSWERED" = "nginx@1 nginx@2 " ]; then
	ok "20/20 answered, by nginx@1 and nginx@2"
else
	fail "expected 20 answers from nginx@1 and nginx@2, got $ERRS errors, answered by: $ANSWERED"
fi

# ------------------------------------------------------ bad announcement ----
step "5b. A bad announcement never reaches haproxy"
say "A value that would make haproxy.cfg invalid: render stages the file, check_cmd (haproxy -c) refuses it,"
say "the live haproxy.cfg and haproxy stay as they were; render retries, and renders again once the key is fixed."
cp "$D/lb/haproxy.cfg" "$D/lb/haproxy.cfg.good"
show env ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINT" put "$NS/bogus.service" "oops 127.0.0.9:8080 nonsense"
refused() { grep -q 'check_cmd.*exited 1' "$D/render.log"; }
wait_for 15 "render to refuse the bad config" refused
printf '%s$ grep check_cmd .demo/render.log | tail -n 1%s\n' "$Y" "$N"
grep 'check_cmd.*exited 1' "$D/render.log" | tail -n 1 | sed "s#$ROOT/##g; s/^/    /"
if cmp -s "$D/lb/haproxy.cfg" "$D/lb/haproxy.cfg.good"; then ok "haproxy.cfg unchanged"; else fail "the bad announcement reached haproxy.cfg"; fi
traffic 10 >/dev/null
if [ "$ERRS" -eq 0 ] && [ "$ANSWERED" = "nginx@1 nginx@2 " ]; then ok "traffic unaffected: 10/10 answered by nginx@1 and nginx@2"; else fail "traffic suffered from a refused config: $ERRS errors"; fi
show env ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINT" del "$NS/bogus.service"
rm -f "$D/lb/haproxy.cfg.good"

# ---------------------------------------------------------- machine loss ----
step "6. A worker hosting an instance dies (kill -9 of its scheduler serve)"
VICTIM_UNIT= VICTIM_IP=
for u in nginx@1.service nginx@2.service; do
	ip=$(unit_ip "$u")
	if [ "$ip" != 127.0.0.2 ]; then VICTIM_UNIT=$u VICTIM_IP=$ip && break; fi # worker-1 holds etcd
done
case "$VICTIM_IP" in
127.0.0.3) VICTIM=worker-2 ;;
127.0.0.4) VICTIM=worker-3 ;;
*) die "no instance on worker-2 or worker-3 to take away (list-units above)" ;;
esac
OTHER_UNIT=nginx@1.service
[ "$VICTIM_UNIT" = nginx@1.service ] && OTHER_UNIT=nginx@2.service
eval "VPID=\$PID_${VICTIM//-/_}"
# Requests go on through haproxy for the whole reschedule.
: >"$D/hammer.log"
(while :; do
	if out=$(curl -s -f -m 2 "http://127.0.0.1:$PORT/"); then echo "ok ${out%% *}"; else echo "error"; fi
	sleep 0.02
done >>"$D/hammer.log") &
HAMMER_PID=$!
sleep 0.5
say "$VICTIM ($VICTIM_IP) runs $VICTIM_UNIT; requests keep going through haproxy meanwhile."
printf '%s$ kill -9 %s    # %s: scheduler serve; its units die with it (parent-death signal)%s\n' "$Y" "$VPID" "$VICTIM" "$N"
T_KILL=$(date +%s.%N)
kill -9 "$VPID"
gone() { ! curl -s -m 1 -o /dev/null "http://$VICTIM_IP:8080/"; }
wait_for 10 "$VICTIM_UNIT's nginx on $VICTIM_IP to be gone with its machine" gone &&
	ok "$VICTIM_UNIT's nginx on $VICTIM_IP died with its machine"

step "7. The engine reschedules $VICTIM_UNIT; render rewrites haproxy.cfg; haproxy reloads"
moved() { local ip; ip=$(unit_ip "$VICTIM_UNIT"); [ -n "$ip" ] && [ "$ip" != "$VICTIM_IP" ]; }
wait_for 40 "$VICTIM_UNIT active on another machine" moved
T_MOVED=$(date +%s.%N)
NEW_IP=$(unit_ip "$VICTIM_UNIT")
show "$S" list-machines
show "$S" list-units
if [ -n "$NEW_IP" ] && [ "$NEW_IP" != 127.0.0.5 ] && [ "$NEW_IP" != "$(unit_ip "$OTHER_UNIT")" ]; then
	ok "$VICTIM_UNIT moved $VICTIM_IP → $NEW_IP: a free worker (not lb-1, not beside $OTHER_UNIT)"
else
	fail "$VICTIM_UNIT should have moved to the free worker, it is on '${NEW_IP:-nowhere}'"
fi
newcfg() { grep -q "$NEW_IP:8080" "$D/lb/haproxy.cfg" && ! grep -q "$VICTIM_IP:8080" "$D/lb/haproxy.cfg"; }
wait_for 20 "haproxy.cfg to name $NEW_IP and no longer $VICTIM_IP" newcfg
T_CFG=$(date +%s.%N)
show sed -n '/^listen/,$p' "$D/lb/haproxy.cfg"
if newcfg; then ok "haproxy.cfg follows: $NEW_IP in, $VICTIM_IP out"; else fail "haproxy.cfg was not updated"; fi
wait_for 15 "both instances answering through haproxy again" both_answer
T_BACK=$(date +%s.%N)
kill "$HAMMER_PID" 2>/dev/null
wait "$HAMMER_PID" 2>/dev/null
HAMMER_PID=

step "8. Traffic again"
printf '%s$ for i in $(seq 20); do curl -s http://127.0.0.1:%s/; done | sort | uniq -c%s\n' "$Y" "$PORT" "$N"
traffic 20
if [ "$ERRS" -eq 0 ] && [ "$ANSWERED" = "nginx@1 nginx@2 " ]; then
	ok "20/20 answered, by nginx@1 and nginx@2"
else
	fail "expected 20 answers from nginx@1 and nginx@2, got $ERRS errors, answered by: $ANSWERED"
fi
TOTAL=$(grep -c . "$D/hammer.log")
HERR=$(grep -c '^error' "$D/hammer.log")
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
say "Requests through haproxy during the reschedule: errors/total = $HERR/$TOTAL"
say "kill -9 → instance active elsewhere: $(secs "$T_KILL" "$T_MOVED")s; → new haproxy.cfg: $(secs "$T_KILL" "$T_CFG")s; → both instances answering: $(secs "$T_KILL" "$T_BACK")s"
# Figures for bench/seed.sh (JSON lines).
{
	printf '{"name":"seed_kill_to_unit_active","unit":"s","value":%s}\n' "$(secs "$T_KILL" "$T_MOVED")"
	printf '{"name":"seed_kill_to_haproxy_cfg","unit":"s","value":%s}\n' "$(secs "$T_KILL" "$T_CFG")"
	printf '{"name":"seed_kill_to_both_answering","unit":"s","value":%s}\n' "$(secs "$T_KILL" "$T_BACK")"
	printf '{"name":"seed_reschedule_errors","unit":"requests","value":%s}\n' "$HERR"
	printf '{"name":"seed_reschedule_requests","unit":"requests","value":%s}\n' "$TOTAL"
} >"$D/figures.jsonl"
if grep -q 'Loading failure' "$D/haproxy.log"; then
	fail "haproxy was asked to load a config that failed"
else
	ok "haproxy never loaded a failing config (render runs haproxy -c before replacing it)"
fi
if [ "$TOTAL" -gt 0 ] && [ "$((TOTAL - HERR))" -gt 0 ]; then ok "traffic kept flowing: $((TOTAL - HERR))/$TOTAL answered"; else fail "no request answered during the reschedule"; fi

# ------------------------------------------------------- rolling update ----
step "9. A rolling update of nginx@ under traffic (scheduler roll)"
say "A new body for the template: the instances answer \"nginx@N v2 …\". roll replaces one instance at a time:"
say "ExecStop=announce --withdraw takes it out of haproxy and waits for render to have applied that, nginx quits"
say "gracefully, the new body starts, and the instance counts as done once announced again and applied by render."
sed -i 's/return 200 \\"nginx@%i on %H/return 200 \\"nginx@%i v2 on %H/' "$D/units/nginx@.service"
grep -q 'nginx@%i v2 on' "$D/units/nginx@.service" || fail "the demo could not make the new body"
: >"$D/roll-hammer.log"
(while :; do
	if out=$(curl -s -f -m 2 "http://127.0.0.1:$PORT/"); then
		set -- $out
		echo "ok $1 $2"
	else
		echo "error"
	fi
	sleep 0.02
done >>"$D/roll-hammer.log") &
HAMMER_PID=$!
sleep 0.5
T_ROLL=$(date +%s.%N)
cd "$D/units" || exit 1
show "$S" roll nginx@.service || fail "scheduler roll did not succeed"
cd "$ROOT" || exit 1
T_ROLLED=$(date +%s.%N)
v2_answer() { traffic 10 >/dev/null; [ "$ERRS" -eq 0 ] && [ "$(grep -c ' v2 on ' "$D/traffic.out")" -eq 10 ]; }
wait_for 15 "every answer from the new body" v2_answer
sleep 0.5
kill "$HAMMER_PID" 2>/dev/null
wait "$HAMMER_PID" 2>/dev/null
HAMMER_PID=
RTOTAL=$(grep -c . "$D/roll-hammer.log")
RERR=$(grep -c '^error' "$D/roll-hammer.log")
say "Answers during the roll, in order of first appearance:"
grep '^ok' "$D/roll-hammer.log" | awk '!seen[$2" "$3]++ {print "    " $2, $3}'
say "Requests through haproxy during the roll: errors/total = $RERR/$RTOTAL; the roll took $(awk -v a="$T_ROLL" -v b="$T_ROLLED" 'BEGIN{printf "%.2f", b-a}')s"
printf '{"name":"seed_roll_errors","unit":"requests","value":%s}\n{"name":"seed_roll_requests","unit":"requests","value":%s}\n{"name":"seed_roll_seconds","unit":"s","value":%s}\n' \
	"$RERR" "$RTOTAL" "$(awk -v a="$T_ROLL" -v b="$T_ROLLED" 'BEGIN{printf "%.2f", b-a}')" >>"$D/figures.jsonl"
if [ "$RERR" -eq 0 ] && [ "$RTOTAL" -gt 0 ]; then
	ok "rolling update: 0 failed of $RTOTAL requests"
else
	fail "rolling update: $RERR failed of $RTOTAL requests"
fi
if v2_answer; then ok "both instances answer from the new body"; else fail "not every answer comes from the new body"; fi

# --------------------------------------------------------------- verdict ----
echo
if [ "$FAILED" -ne 0 ]; then
	printf '%sdemo: %d check(s) failed (logs in .demo/*.log)%s\n' "$R" "$FAILED" "$N"
	exit 1
fi
printf '%sdemo: every check held (%s)%s\n' "$G" "$(elapsed | tr -d ' ')" "$N"
printf '{"name":"seed_demo_total","unit":"s","value":%s}\n' "$(elapsed | tr -d ' s')" >>"$D/figures.jsonl"
DONE=1
if [ "$KEEP" = 1 ]; then
	cat <<EOF

Everything is still running (KEEP=1). Try:
    export FLOTILLA_ENDPOINTS=$ENDPOINT
    bin/scheduler list-machines
    bin/scheduler list-units
    bin/scheduler journal nginx@1.service
    curl http://127.0.0.1:$PORT/
    cat .demo/lb/haproxy.cfg
    bin/scheduler start --no-block .demo/units/nginx@3.service   # no free worker is left (Conflicts):
    bin/scheduler list-unit-files                                # it waits, unplaced
    ETCDCTL_API=3 etcdctl --endpoints $ENDPOINT get --prefix $NS/
Logs: .demo/*.log.  Stop everything: scripts/demo.sh stop
EOF
fi
exit 0
