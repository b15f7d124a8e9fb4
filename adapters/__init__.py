"""Adapters: the node's edges to the systems around it (installed as ``mrx.adapters``).

National customs systems (webhook, file exchange, NCTS-style XML) and lock
gateways (the MQTT lock listener, the gateway simulator) meet the node here;
`node/` never imports a particular adapter by name except to build the ones a
config asks for.
"""
