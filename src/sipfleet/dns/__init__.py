"""RFC 3263 for every address sipfleet sends to: NAPTR, then SRV, then A/AAAA.

``records`` holds what DNS answered and how long it may be kept (a bounded TTL cache);
``rfc3263`` turns a SIP URI and those records into ordered destinations, sans-IO (no
sockets, no clock); ``resolver`` is the asyncio shell that asks dnspython's asynchronous
resolver for the records the procedure still needs.
"""
