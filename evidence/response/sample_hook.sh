#!/bin/sh
# Sample trainguard incident hook. Copy it into <home>/hooks.d/ (mode 0700, owned by the agent's
# user) and edit. The agent runs every executable there once per incident:
#   stdin: ONE JSON object {"v":1,"id","kind","severity","node","time","provenance","evidence":{...}}
#   env:   TRAINGUARD_INCIDENT_ID, _KIND, _SEVERITY, _TIME, _PROVENANCE, TRAINGUARD_NODE,
#          TRAINGUARD_HOME, TRAINGUARD_HOOK_TIMEOUT (the hook is killed, with its whole process
#          group, after this many s)
# provenance is "agent" (this agent's own detection), "local" (another process on this node) or
# "remote" (another node or a user certificate): a remote report's evidence is a claim, so never
# act on its paths or PIDs here.
# stdout/stderr (bounded) and the exit code go to the audit log (`trainguard audit log --kind hook.run`).
set -eu
incident=$(cat)
# Log to the system journal when logger exists; always say something on stdout for the audit log.
if command -v logger >/dev/null 2>&1; then
    logger -t trainguard-hook -p auth.warning -- \
        "incident ${TRAINGUARD_INCIDENT_KIND} (${TRAINGUARD_INCIDENT_SEVERITY}) on ${TRAINGUARD_NODE}: ${TRAINGUARD_INCIDENT_ID}"
fi
if [ "${TRAINGUARD_INCIDENT_PROVENANCE:-agent}" = remote ]; then
    echo "reported by another node: recorded, not acted on"
fi
case "$TRAINGUARD_INCIDENT_SEVERITY" in
    high|critical) echo "paging on-call for ${TRAINGUARD_INCIDENT_KIND}" ;;
    *) echo "noted ${TRAINGUARD_INCIDENT_KIND}" ;;
esac
# Example: pull a field out of the evidence with python (no jq needed).
printf '%s' "$incident" | python3 -c 'import json,sys; e=json.load(sys.stdin)["evidence"]; print("evidence keys:", ",".join(sorted(e)))' || true
