"""The load balancer (DESIGN §1): stateless outbound proxy, flows, NAT keepalives, pools.

Sans-IO decisions: ``sides`` (the LB's own addresses), ``pools`` (targets, health,
choice by Call-ID), ``router`` (where a request goes and what it gets on the way),
``keepalive`` (the flow table and its timing wheel), ``handoff`` (messages between
worker processes). The asyncio shell: ``endpoint``, ``balancer`` (the SipHandler) and
``service`` (timers, database, one worker's life). docs/lb.md tells the whole story.
"""
