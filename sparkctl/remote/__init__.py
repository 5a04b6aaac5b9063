"""Running commands on nodes: one Runner seam, SSH and local implementations,
and a fan-out that returns every node's outcome."""
