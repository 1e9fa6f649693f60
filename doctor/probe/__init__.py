"""`kvmdoctor probe`: the path of a guest's traffic, what its state predicts, and (as root,
on request) marked packets sent along it to find the hop where they die.

- path: the hops, discovered from the facts (links, domains, networks) and netlink.
- predict: static verdicts per hop, pure functions of the path.
- verdict: pure; observations and predictions in, PRB findings out.
- lab: the one object through which the probe changes the host, and undoes it.
- trace, capture: observation only (kernel drop events, L2 capture sockets).
- inject: the marked packets.
- kernel: the few live questions the Source API does not ask (`route get` with iif).
"""

from __future__ import annotations
