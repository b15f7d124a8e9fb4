#!/bin/sh
# Creates the three nodes of the compose corridor, once, the way their
# operators would (docs/corridor.md does the same by hand for two nodes):
#
#   1. `mrx init` each node in its own volume: Alashankou (CN-AKL, CNAKL),
#      Dostyk (KZ-DOS, KZDOS) and Małaszewicze (PL-MAA, PLMAA);
#   2. take each node's anchor (its active key's thumbprint, `mrx keys list`)
#      and log key (`mrx log key`): what operators exchange out of band;
#   3. write every other node into each one's mrx.toml as a [[partners]]
#      table, with its log_key, so that the nodes also witness each other;
#      Dostyk and Małaszewicze recognise Alashankou's inspections
#      ([[agreements]]), Małaszewicze also Dostyk's unseal authorisations;
#   4. Dostyk takes its gateways' seal events from the broker ([mqtt]): draw
#      the broker passwords of the node (mrx-node) and of one gateway
#      (GW-DOS-01) into the broker's secrets, which broker-start.sh hashes,
#      and give the gateway its credential at the node (the lock scope).
#
# Nodes listen on 0.0.0.0:8470 inside their containers and call each other
# by service name. Run again, it leaves existing nodes alone.
#
# CORRIDOR is where the volumes are mounted (default /corridor), one
# directory per node (cn-akl, kz-dos, pl-maa) and broker/ for the broker's
# secrets; the directories' names are the compose services' names.
set -eu

CORRIDOR=${CORRIDOR:-/corridor}
NODES="CN-AKL:CNAKL:cn-akl KZ-DOS:KZDOS:kz-dos PL-MAA:PLMAA:pl-maa"

made=0
for spec in $NODES; do
    dir=${spec##*:}
    [ -e "$CORRIDOR/$dir/mrx.toml" ] && made=$((made + 1))
done
if [ "$made" -eq 3 ]; then
    echo "init-corridor: the three nodes exist already; nothing to do"
    exit 0
elif [ "$made" -ne 0 ]; then
    echo "init-corridor: only $made of the three nodes exist in $CORRIDOR; remove the volumes" \
         "(docker compose down -v) and start again" >&2
    exit 1
fi

secret() {  # a random password, 32 letters and digits
    tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 32
}

# 1. and 2.
for spec in $NODES; do
    node_id=${spec%%:*}; rest=${spec#*:}; office=${rest%%:*}; dir=${rest#*:}
    mrx init --node-id "$node_id" --office "$office" --dir "$CORRIDOR/$dir" --host 0.0.0.0 --port 8470
    mrx keys list --config "$CORRIDOR/$dir/mrx.toml" | awk '$3 == "active" {print $1}' > "$CORRIDOR/$dir/anchor"
    mrx log key --config "$CORRIDOR/$dir/mrx.toml" > "$CORRIDOR/$dir/log-key"
done

# 3.
for spec in $NODES; do
    dir=${spec##*:}
    for other in $NODES; do
        [ "$other" = "$spec" ] && continue
        other_id=${other%%:*}; rest=${other#*:}; other_office=${rest%%:*}; other_dir=${rest#*:}
        cat >> "$CORRIDOR/$dir/mrx.toml" <<TOML

[[partners]]
node_id = "$other_id"
url = "http://$other_dir:8470"
anchors = ["$(cat "$CORRIDOR/$other_dir/anchor")"]
offices = ["$other_office"]
log_key = "$(cat "$CORRIDOR/$other_dir/log-key")"
TOML
    done
done
for spec in "KZ-DOS:kz-dos:" "PL-MAA:pl-maa:KZDOS"; do
    node_id=${spec%%:*}; rest=${spec#*:}; dir=${rest%%:*}; unseal=${rest#*:}
    offices=""
    [ -n "$unseal" ] && offices="\"$unseal\""
    cat >> "$CORRIDOR/$dir/mrx.toml" <<TOML

[[agreements]]
id = "$node_id-CN-AKL-MRA"
partner = "CN-AKL"
control_types = ["physical", "non-intrusive"]
result_codes = ["A1", "A2"]
max_age_hours = 720
require_intact_chain = true
unseal_offices = [$offices]
TOML
done

# 4.
mkdir -p "$CORRIDOR/broker"
(umask 077 && secret > "$CORRIDOR/kz-dos/mqtt.password")
cp "$CORRIDOR/kz-dos/mqtt.password" "$CORRIDOR/broker/mrx-node.password"
(umask 077 && secret > "$CORRIDOR/broker/GW-DOS-01.password")
cat >> "$CORRIDOR/kz-dos/mrx.toml" <<TOML

[mqtt]
host = "broker"
port = 1883
username = "mrx-node"
password_file = "mqtt.password"
topic_prefix = "mrx"
max_inflight = 1000
TOML
# Over MQTT the broker password authenticates the gateway; the node still needs
# its credential for the lock scope. The bearer token it prints is not used.
mrx gateway add GW-DOS-01 --locks 'LK-*' --config "$CORRIDOR/kz-dos/mrx.toml" > /dev/null

# The nodes (and the demo simulator, which reads the gateway's password) run
# as the image's unprivileged user, uid 10001; this script runs as root.
if [ "$(id -u)" = 0 ] && id mrx > /dev/null 2>&1; then
    for spec in $NODES; do
        chown -R mrx:mrx "$CORRIDOR/${spec##*:}"
        chmod 0700 "$CORRIDOR/${spec##*:}"
    done
    chown mrx:mrx "$CORRIDOR/broker/GW-DOS-01.password"
fi
for spec in $NODES; do
    dir=${spec##*:}
    echo "init-corridor: ${spec%%:*} anchor $(cat "$CORRIDOR/$dir/anchor"), log key $(cat "$CORRIDOR/$dir/log-key")"
done
