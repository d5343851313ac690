"""The delaying relay really delays: a round trip through it to an echo server takes at least the
configured RTT (both directions; no relay can be faster than its delay) and clearly less than twice
it (each byte delayed once per direction, not twice). The delay is large (50 ms per direction) so
that scheduling noise on a loaded machine (tens of ms) cannot reach the 100 ms that separate the two."""
from __future__ import annotations

from benchmarks.delay_link import delayed_links, probe_rtt
from protocols.parties import free_ports


def test_relay_adds_the_configured_round_trip() -> None:
    relay, echo = (f"127.0.0.1:{p}" for p in free_ports(2))
    with delayed_links([(relay, echo)], delay_s=0.0, echo=echo):
        direct = probe_rtt(relay)
    with delayed_links([(relay, echo)], delay_s=0.05, echo=echo):
        delayed = probe_rtt(relay)
    assert delayed >= 0.100                       # 2 × 50 ms: the lower bound is physical
    assert delayed - direct < 0.150               # a double delay per direction would add 200 ms
